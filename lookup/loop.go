package lookup

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"smtp-gated/internal/config"
)

// remoteLoop tells why a destination that a remote helper gave (modes
// remote and remote-udp) would make the proxy connect to itself: a
// loopback address, the unspecified address, or an address of the
// proxy's own (the local address of the client's connection, or one of
// its interfaces). "" when it is none of them. A helper that is wrong or
// compromised must not make the proxy relay to a service on its own host.
func remoteLoop(cfg *config.Config, dst, local netip.AddrPort, own func() []netip.Addr) string {
	if !cfg.Mode.Remote() {
		return ""
	}
	a := dst.Addr().Unmap()
	switch {
	case a.IsLoopback():
		return "the helper's answer is a loopback address"
	case a.IsUnspecified():
		return "the helper's answer is the unspecified address"
	case a == local.Addr().Unmap():
		return "the helper's answer is the address the client connected to"
	}
	for _, o := range own() {
		if a == o {
			return "the helper's answer is an address of the proxy's own"
		}
	}
	return ""
}

// ownAddrs caches the addresses of the host's interfaces for a few
// seconds: the list is asked of the kernel, not of the file system, so it
// works in the chroot.
type ownAddrs struct {
	mu    sync.Mutex
	at    time.Time
	addrs []netip.Addr
}

func (o *ownAddrs) get() []netip.Addr {
	o.mu.Lock()
	defer o.mu.Unlock()
	if time.Since(o.at) < 5*time.Second {
		return o.addrs
	}
	o.at = time.Now()
	var addrs []netip.Addr // a new slice: callers may still read the old one
	ifas, _ := net.InterfaceAddrs()
	for _, ifa := range ifas {
		if p, err := netip.ParsePrefix(ifa.String()); err == nil {
			addrs = append(addrs, p.Addr().Unmap())
		}
	}
	o.addrs = addrs
	return addrs
}
