package lookup

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/miekg/dns"
)

// Name servers. Go's own resolver re-reads /etc/resolv.conf every few
// seconds and falls back to localhost when it is missing, as it is in the
// lookup process's chroot: so the servers are read once before the
// chroot, and every query (miekg/dns for DNSBL, a net.Resolver whose Dial
// is ours for SPF) goes to them explicitly. dns_server overrides them.

// resolvConf returns the name servers of a resolv.conf file as host:port.
func resolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, err
	}
	port := cc.Port
	if port == "" {
		port = "53"
	}
	var out []string
	for _, s := range cc.Servers {
		if a, err := netip.ParseAddr(s); err == nil {
			// A zone (fe80::1%eth0) survives String.
			out = append(out, net.JoinHostPort(a.String(), port))
		}
	}
	return out, nil
}

// nameservers is the list queries go to: dns_server if set, else what
// resolv.conf said at start.
func (s *server) nameservers() []string {
	if ns := s.cfg.Load().DNSServers(); len(ns) > 0 {
		return ns
	}
	return s.sysNS
}

// netResolver is a Go resolver that sends every query to servers, turn
// about (its retries thus reach the next server).
func netResolver(servers []string) *net.Resolver {
	var next atomic.Uint32
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			if len(servers) == 0 {
				return nil, &net.DNSError{Err: "no name server (dns_server and /etc/resolv.conf name none)", IsTemporary: true}
			}
			srv := servers[int(next.Add(1)-1)%len(servers)]
			var d net.Dialer
			return d.DialContext(ctx, network, srv)
		},
	}
}

// fqdnResolver makes every name absolute, so that no search domain of a
// resolv.conf (read by the Go resolver outside a chroot) is ever tried.
type fqdnResolver struct{ r *net.Resolver }

func (f fqdnResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return f.r.LookupTXT(ctx, dns.Fqdn(name))
}

func (f fqdnResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	return f.r.LookupMX(ctx, dns.Fqdn(name))
}

func (f fqdnResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	return f.r.LookupIPAddr(ctx, dns.Fqdn(host))
}

func (f fqdnResolver) LookupAddr(ctx context.Context, addr string) ([]string, error) {
	return f.r.LookupAddr(ctx, addr)
}
