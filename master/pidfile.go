package master

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pidfile: %w", err)
	}
	m.pidfile = path
	return nil
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
