package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// closeInherited closes a descriptor without close-on-exec (as one that
// came through execve), and keeps close-on-exec ones (the runtime's, and
// the process's own) and the detach pipe named by readyFDEnv.
func TestCloseInherited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(flags int) int {
		fd, err := unix.Open(path, unix.O_RDONLY|flags, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	inherited, ready, own := open(0), open(0), open(unix.O_CLOEXEC)
	defer unix.Close(ready)
	defer unix.Close(own)
	t.Setenv(readyFDEnv, strconv.Itoa(ready))
	closeInherited()
	isOpen := func(fd int) bool {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		return err == nil
	}
	if isOpen(inherited) {
		unix.Close(inherited)
		t.Errorf("descriptor %d without close-on-exec left open", inherited)
	}
	if !isOpen(ready) {
		t.Errorf("the ready descriptor %d was closed", ready)
	}
	if !isOpen(own) {
		t.Errorf("close-on-exec descriptor %d was closed", own)
	}
}
