//go:build !freebsd && !openbsd

package lookup

import (
	"errors"
	"net/netip"
	"os"
)

func pfDst(dev *os.File, client, local netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("pf: only on FreeBSD and OpenBSD")
}

func ipnatDst(dev *os.File, client, local netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("ipfilter: only on FreeBSD")
}
