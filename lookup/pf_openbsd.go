package lookup

import (
	"errors"
	"net/netip"
	"os"
)

var pfSystem = pfOpenBSD

// ipnatDst: OpenBSD dropped ipfilter.
func ipnatDst(dev *os.File, client, local netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("ipfilter: not on OpenBSD")
}
