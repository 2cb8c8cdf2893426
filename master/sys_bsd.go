//go:build freebsd || openbsd

package master

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
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

// fdPeerUID is the uid of the process at the other end of socket fd.
func fdPeerUID(fd int) (int, error) { return getpeereid(fd) }

// accept4 accepts a connection on fd, close-on-exec and non-blocking.
// Under syscall.ForkLock, so that no child started meanwhile inherits it
// before it is close-on-exec.
func accept4(fd int) (int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	nfd, _, err := unix.Accept(fd)
	if err != nil {
		return -1, err
	}
	unix.CloseOnExec(nfd)
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return -1, err
	}
	return nfd, nil
}
