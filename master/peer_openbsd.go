package master

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockpeercred is OpenBSD's struct sockpeercred.
type sockpeercred struct {
	uid, gid uint32
	pid      int32
}

func getpeereid(fd int) (int, error) {
	var c sockpeercred
	l := uint32(unsafe.Sizeof(c))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERCRED, uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return -1, e
	}
	return int(c.uid), nil
}
