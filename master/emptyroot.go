package master

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// emptyRoot returns the directory children change their root to when
// chroot_path is not set: "empty" beside the pidfile, owned by root,
// mode 0555, with nothing in it. It is made once and kept, so that a
// daemon that is killed leaves nothing behind.
func emptyRoot(pidfile string) (string, error) {
	dir := "/var/run/smtp-gated"
	if pidfile != "" {
		dir = filepath.Dir(pidfile)
	}
	d := filepath.Join(dir, "empty")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("empty root directory: %w", err)
	}
	if err := os.Mkdir(d, 0o555); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("empty root directory: %w", err)
	}
	fi, err := os.Lstat(d)
	if err != nil {
		return "", fmt.Errorf("empty root directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || st.Uid != 0 || fi.Mode().Perm()&0o222 != 0 {
		return "", fmt.Errorf("empty root directory %s: must be a directory owned by root and not writable (mode 0555)", d)
	}
	if entries, err := os.ReadDir(d); err != nil || len(entries) > 0 {
		return "", fmt.Errorf("empty root directory %s: must be empty", d)
	}
	return d, nil
}
