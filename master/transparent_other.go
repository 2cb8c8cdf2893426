//go:build !linux

package master

import (
	"errors"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

var errNoTproxy = errors.New("mode tproxy is Linux only")

func transparent(l *net.TCPListener) error { return errNoTproxy }

func spoofSocket(client netip.AddrPort) (int, error) { return -1, errNoTproxy }

func closeFD(fd int) { unix.Close(fd) }
