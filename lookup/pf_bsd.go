//go:build freebsd || openbsd

package lookup

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues a read-write ioctl whose parameter is the byte array b.
func ioctl(dev *os.File, req uint64, b []byte) error {
	rc, err := dev.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	err = rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&b[0])))
	})
	runtime.KeepAlive(b)
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// pfDst asks pf's state table (DIOCNATLOOK on the /dev/pf master opened)
// where the connection from client to local was going.
func pfDst(dev *os.File, client, local netip.AddrPort) (netip.AddrPort, error) {
	if dev == nil {
		return netip.AddrPort{}, errors.New("pf: /dev/pf was not opened by master")
	}
	b, err := pfSystem.encode(client, local)
	if err != nil {
		return netip.AddrPort{}, err
	}
	err = ioctl(dev, pfSystem.ioctl, b)
	if errors.Is(err, unix.ENOENT) {
		return netip.AddrPort{}, fmt.Errorf("pf: %w (DIOCNATLOOK: %v)", errNotFound, err)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("pf: DIOCNATLOOK: %w", err)
	}
	return pfSystem.decode(b)
}
