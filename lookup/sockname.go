package lookup

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// sockname is the getsockname (and ipfw, OpenBSD divert-to) mode: the
// packet was not rewritten, so the socket's own local address is where
// the client was going.
func sockname(f *os.File) (netip.AddrPort, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
	}
	var sa unix.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockname: %w", serr)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("getsockname: not an internet socket (%T)", sa)
}
