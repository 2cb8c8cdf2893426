package lookup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SO_ORIGINAL_DST (and IP6T_SO_ORIGINAL_DST, the same number at level
// SOL_IPV6) return the destination before a netfilter REDIRECT or DNAT.
// x/sys does not define them.
const soOriginalDst = 80

// netfilterDst asks conntrack for the destination of the connection on f.
// An IPv4 client (also one on a dual-stack socket) is asked at level
// SOL_IP; only a real IPv6 connection at SOL_IPV6.
func netfilterDst(f *os.File, local netip.AddrPort) (netip.AddrPort, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netfilter: %w", err)
	}
	var dst netip.AddrPort
	var gerr error
	err = rc.Control(func(fd uintptr) {
		if local.Addr().Unmap().Is4() {
			var sa unix.RawSockaddrInet4
			l := uint32(unsafe.Sizeof(sa))
			gerr = getsockopt(int(fd), unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &l)
			if gerr == nil {
				port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
				dst = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			}
			return
		}
		var sa unix.RawSockaddrInet6
		l := uint32(unsafe.Sizeof(sa))
		gerr = getsockopt(int(fd), unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &l)
		if gerr == nil {
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
			dst = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
		}
	})
	if err == nil {
		err = gerr
	}
	if errors.Is(err, unix.ENOENT) {
		return netip.AddrPort{}, fmt.Errorf("netfilter: %w (%v)", errNotFound, err)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("netfilter: SO_ORIGINAL_DST: %w", err)
	}
	return dst, nil
}

func getsockopt(fd, level, opt int, p unsafe.Pointer, l *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(l)), 0)
	if e != 0 {
		return e
	}
	return nil
}
