package master

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A link planted where the pidfile's temporary file used to be made
// (pidfile.tmp), or in the pidfile's place, is not followed: its target
// keeps its content, and the pidfile is a regular file of master's.
func TestPidfileNoFollow(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "smtp-gated.pid")
	for _, link := range []string{path + ".tmp", path} {
		os.Remove(path + ".tmp")
		os.Remove(path)
		if err := os.Symlink(victim, link); err != nil {
			t.Fatal(err)
		}
		m := &master{}
		if err := m.writePidfile(path); err != nil {
			t.Fatalf("link at %s: %v", filepath.Base(link), err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
			t.Errorf("link at %s: the link's target was written: %q", filepath.Base(link), b)
		}
		fi, err := os.Lstat(path)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
			t.Fatalf("link at %s: pidfile %v, %v; want a regular file, mode 0644", filepath.Base(link), fi, err)
		}
		if pid, err := ReadPidfile(path); err != nil || pid != os.Getpid() {
			t.Errorf("pidfile holds %d (%v), want %d", pid, err, os.Getpid())
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".smtp-gated.pid.") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

// The control socket is created with mode 0666 by bind, whatever the
// umask, and no chmod by path follows: a link put in place of the socket
// in the meantime would lead the chmod to its target. A link found at the
// path at start-up is replaced, its target untouched.
func TestControlSocketMode(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "control.sock")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	m := &master{}
	if err := m.openControl(path); err != nil {
		t.Fatal(err)
	}
	defer m.closeControl()
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Fatalf("control socket %v, %v; want a socket, mode 0666", fi, err)
	}
	if vi, _ := os.Stat(victim); vi.Mode().Perm() != 0o600 {
		t.Errorf("the link's target has mode %v, want 0600", vi.Mode().Perm())
	}
	if now := syscall.Umask(0o077); now != 0o077 {
		t.Errorf("umask after openControl is %#o, want it restored (0077)", now)
	}
}
