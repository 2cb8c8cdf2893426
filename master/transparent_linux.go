package master

import (
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// transparent sets IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket,
// which also serves its IPv4 clients) on the listener, so that TPROXY can
// deliver connections to any address to it. It needs CAP_NET_ADMIN.
func transparent(l *net.TCPListener) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			serr = err
			return
		}
		if _, v6 := sa.(*unix.SockaddrInet6); v6 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("IP_TRANSPARENT on the listener (mode tproxy needs root or CAP_NET_ADMIN): %w", err)
	}
	return nil
}

// spoofSocket makes the outgoing socket of a tproxied connection:
// non-blocking TCP, SO_REUSEADDR and IP_TRANSPARENT, bound to the client's
// address and port as the original does (the port too, so that the MTA
// sees the client's very connection; if it is taken, any port).
func spoofSocket(client netip.AddrPort) (int, error) {
	a := client.Addr().Unmap()
	family, level, opt := unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT
	sa := func(port int) unix.Sockaddr { return &unix.SockaddrInet4{Port: port, Addr: a.As4()} }
	if !a.Is4() {
		family, level, opt = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		sa = func(port int) unix.Sockaddr { return &unix.SockaddrInet6{Port: port, Addr: a.As16()} }
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("SO_REUSEADDR", err)
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fail("IP_TRANSPARENT", err)
	}
	if err := unix.Bind(fd, sa(int(client.Port()))); err != nil {
		if err != unix.EADDRINUSE {
			return fail(fmt.Sprintf("bind %v", client), err)
		}
		if err := unix.Bind(fd, sa(0)); err != nil {
			return fail(fmt.Sprintf("bind %v", a), err)
		}
	}
	return fd, nil
}

func closeFD(fd int) { unix.Close(fd) }
