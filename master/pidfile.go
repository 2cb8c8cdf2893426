package master

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// writePidfile records the master's pid, refusing to start when the pid
// it finds there is a running smtp-gated.
func (m *master) writePidfile(path string) error {
	if path == "" {
		return nil
	}
	if pid, err := ReadPidfile(path); err == nil && pid != os.Getpid() && processAlive(pid) && isSmtpGated(pid) {
		return fmt.Errorf("pidfile %s: smtp-gated is already running as pid %d", path, pid)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	// A new temporary file (O_CREAT|O_EXCL|O_NOFOLLOW, a random name),
	// renamed over the pidfile: no link planted in the directory is
	// followed, and the rename replaces a link rather than its target.
	tmp, err := writeNew(filepath.Dir(path), "."+filepath.Base(path)+".", []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pidfile: %w", err)
	}
	m.pidfile = path
	return nil
}

// writeNew writes b to a new file in dir whose name starts with prefix,
// with mode perm whatever the umask, and returns its path.
func writeNew(dir, prefix string, b []byte, perm os.FileMode) (string, error) {
	for i := 0; ; i++ {
		var r [8]byte
		rand.Read(r[:])
		name := filepath.Join(dir, prefix+hex.EncodeToString(r[:]))
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, perm)
		if errors.Is(err, os.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			return "", err
		}
		err = f.Chmod(perm)
		if err == nil {
			_, err = f.Write(b)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(name)
			return "", err
		}
		return name, nil
	}
}

// ReadPidfile returns the pid written in path.
func ReadPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: %q is not a pid", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// isSmtpGated reports whether pid runs smtp-gated, where /proc tells;
// elsewhere any live pid counts.
func isSmtpGated(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if errors.Is(err, os.ErrNotExist) {
		_, statErr := os.Stat("/proc/self")
		return statErr != nil
	}
	return err == nil && strings.Contains(string(b), "smtp-gated")
}
