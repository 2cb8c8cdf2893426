//go:build !linux

package lookup

import (
	"errors"
	"net/netip"
	"os"
)

func netfilterDst(f *os.File, local netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("netfilter: only on Linux")
}
