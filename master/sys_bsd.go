//go:build freebsd || openbsd

package master

import (
	"net"
	"syscall"
)

func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }

// peerUID is the uid of the process at the other end of uc.
func peerUID(uc *net.UnixConn) (int, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return -1, err
	}
	uid := -1
	var cerr error
	if err := rc.Control(func(fd uintptr) { uid, cerr = getpeereid(int(fd)) }); err != nil {
		return -1, err
	}
	return uid, cerr
}

// processAlive reports whether pid is still a process. The BSDs need not
// mount /proc: a zombie counts as alive until master's Wait reaps it.
func processAlive(pid int) bool { return syscall.Kill(pid, 0) == nil }
