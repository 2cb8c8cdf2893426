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

var pfSystem = pfFreeBSD

// ipnatDst asks ipfilter's NAT table (SIOCGNATL on the /dev/ipnat master
// opened) where the connection from client to local was going.
func ipnatDst(dev *os.File, client, local netip.AddrPort) (netip.AddrPort, error) {
	if dev == nil {
		return netip.AddrPort{}, errors.New("ipfilter: /dev/ipnat was not opened by master")
	}
	nl, err := natlookEncode(client, local)
	if err != nil {
		return netip.AddrPort{}, err
	}
	obj := ipfobjEncode(uintptr(unsafe.Pointer(&nl[0])))
	err = ioctl(dev, siocgnatl, obj)
	runtime.KeepAlive(nl)
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		return netip.AddrPort{}, fmt.Errorf("ipfilter: %w (SIOCGNATL: %v)", errNotFound, err)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("ipfilter: SIOCGNATL: %w", err)
	}
	return natlookDecode(nl)
}
