package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeInherited closes every descriptor from 3 up that this process
// inherited, except those it is meant to receive: the sockets of socket
// activation (LISTEN_FDS for this pid) and the pipe on which a detached
// master reports its start (readyFDEnv). A descriptor an administrator's
// shell or a careless parent left open (`exec 7</etc/shadow`) would
// otherwise reach every child, chrooted workers and action_script
// included.
//
// Inherited descriptors are told apart from the Go runtime's own (its
// epoll or kqueue, its wake-up descriptor) by FD_CLOEXEC: execve closes
// every close-on-exec descriptor, so one that is open now without the flag
// came through execve, while the runtime opens all of its own with it.
func closeInherited() {
	keep := map[int]bool{}
	if pid, err := strconv.Atoi(os.Getenv("LISTEN_PID")); err == nil && pid == os.Getpid() {
		if n, err := strconv.Atoi(os.Getenv("LISTEN_FDS")); err == nil {
			for fd := 3; fd < 3+n; fd++ {
				keep[fd] = true
			}
		}
	}
	if fd, err := strconv.Atoi(os.Getenv(readyFDEnv)); err == nil {
		keep[fd] = true
	}
	eachFD(func(fd int) {
		if fd < 3 || keep[fd] {
			return
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			return
		}
		unix.Close(fd)
	})
}

// eachFD calls f with each open descriptor: those listed in /proc/self/fd
// (Linux), or, where there is none (the BSDs), every number below the
// descriptor limit, which f's fcntl tells apart.
func eachFD(f func(int)) {
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				f(fd)
			}
		}
		return
	}
	limit := uint64(1 << 20)
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && uint64(rl.Cur) < limit {
		limit = uint64(rl.Cur)
	}
	for fd := 0; uint64(fd) < limit; fd++ {
		f(fd)
	}
}
