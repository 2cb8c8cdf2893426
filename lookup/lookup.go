// Package lookup is the lookup process: it answers session workers' "where
// was this connection going?" for every mode (kernel NAT tables, TPROXY,
// the remote helpers), and does the DNS work (DNSBL, SPF). It holds no
// client state; each query stands alone.
package lookup

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// server is the lookup process's state.
type server struct {
	env *child.Env
	cfg atomic.Pointer[config.Config]
	// natDev is /dev/pf or /dev/ipnat, opened by master (modes pf,
	// ipfilter); nil otherwise.
	natDev *os.File
	// sysNS are the name servers of /etc/resolv.conf, read before the
	// chroot.
	sysNS []string
	// own are the addresses of the host's interfaces, for remoteLoop.
	own ownAddrs
}

// Run serves until master closes the link.
func Run(env *child.Env) error {
	s := &server{env: env}
	s.cfg.Store(env.Cfg)
	s.openNatDev()
	if ns, err := resolvConf("/etc/resolv.conf"); err != nil {
		if len(env.Cfg.DNSServers()) == 0 && (env.Cfg.Dnsbl != "" || env.Cfg.Spf != config.SPFOff) {
			env.Log.Warningf("name servers: %v (DNSBL and SPF look-ups will fail; see dns_server)", err)
		}
	} else {
		s.sysNS = ns
	}
	// Look-ups need nothing from the file system: an empty root will do.
	dir := env.Cfg.ChrootPath
	if dir == "" {
		dir = env.Hello.EmptyDir
	}
	if err := env.Drop(dir); err != nil {
		return err
	}
	if err := env.Confine(nil); err != nil {
		return err
	}
	if err := env.Ready(); err != nil {
		return err
	}
	master := ipc.NewPeer(env.Master, "master", s.fromMaster)
	env.LinkEnded(master.Run())
	return nil
}

// original finds the original destination of the connection from client
// to local (the socket is f). Kernel-specific modes live in *_GOOS.go.
func (s *server) original(cfg *config.Config, f *os.File, client, local netip.AddrPort) (dst netip.AddrPort, ident string, err error) {
	timeout := cfg.LookupTimeout()
	switch cfg.Mode {
	case config.ModeNetfilter:
		dst, err = netfilterDst(f, local)
	case config.ModeTproxyNetfilter:
		if cfg.Spoofs(client.Addr()) {
			dst, err = sockname(f)
		} else {
			dst, err = netfilterDst(f, local)
		}
	case config.ModeGetsockname, config.ModeIpfw, config.ModeTproxy:
		dst, err = sockname(f)
	case config.ModePf:
		dst, err = pfDst(s.natDev, client, local)
	case config.ModeIpfilter:
		dst, err = ipnatDst(s.natDev, client, local)
	case config.ModeRemoteUDP:
		dst, ident, err = remoteUDP(client, local, cfg.RemotePort, uint32(cfg.RemoteUdpSecret), int(cfg.RemoteUdpRetries), timeout)
	case config.ModeRemote:
		dst, ident, err = remoteTCP(client, local, cfg.RemotePort, timeout)
	default:
		err = fmt.Errorf("mode %v is not supported by this build", cfg.Mode)
	}
	return dst, ident, err
}

// errNotFound is a look-up that found no record of the connection.
var errNotFound = errors.New("no record of this connection")

// isLoop reports whether dst is the proxy itself. Where the kernel
// rewrote the destination (netfilter, pf, ipfilter) or a helper tells it,
// the rewritten address is the proxy's: an answer equal to it means the
// client connected to the proxy directly. Where the local address is the
// destination (getsockname, ipfw, tproxy), that is always so, and a loop
// is a destination on the proxy's own port.
func isLoop(cfg *config.Config, dst, local netip.AddrPort) bool {
	if dst != local {
		return false
	}
	if cfg.Mode.LocalIsDestination() {
		return dst.Port() == cfg.Port
	}
	return true
}

// answer does one query.
func (s *server) answer(q *ipc.DstQuery, f *os.File) *ipc.DstAnswer {
	cfg := s.cfg.Load()
	dst, ident, err := s.original(cfg, f, q.Client, q.Local)
	var le *lookupError
	switch {
	case errors.As(err, &le):
		return &ipc.DstAnswer{Fail: le.kind, Err: err.Error()}
	case errors.Is(err, errNotFound):
		return &ipc.DstAnswer{Fail: ipc.LookupNotFound, Err: err.Error()}
	case err != nil:
		return &ipc.DstAnswer{Fail: ipc.LookupFailed, Err: err.Error()}
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	local := netip.AddrPortFrom(q.Local.Addr().Unmap(), q.Local.Port())
	if isLoop(cfg, dst, local) {
		// The client connected to the proxy itself, not through the
		// redirect: relaying would connect the proxy to itself.
		return &ipc.DstAnswer{Dst: dst, Ident: ident, Fail: ipc.LookupLoop, Err: "destination is the proxy itself"}
	}
	if why := remoteLoop(cfg, dst, local, s.own.get); why != "" {
		return &ipc.DstAnswer{Dst: dst, Ident: ident, Fail: ipc.LookupLoop, Err: why}
	}
	return &ipc.DstAnswer{Dst: dst, Ident: ident}
}

// fromMaster is the dispatch of messages from master.
func (s *server) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.Config:
		if cfg := s.env.Reconfigure(p, m, v); cfg != nil {
			s.env.Refit(cfg, nil)
			s.cfg.Store(cfg)
		}
	case *ipc.PeerLink:
		s.env.ServeSessionLink(m, v, s.fromSession, nil)
	default:
		s.env.Fatalf("unexpected %v from master", m.Type)
	}
}

// fromSession is the dispatch of messages from one session worker. Each
// query is answered on a goroutine of its own: a slow DNS zone or remote
// helper holds up no other session.
func (s *server) fromSession(p *ipc.Peer, m *ipc.Msg) {
	cfg := s.cfg.Load()
	timeout := cfg.LookupTimeout()
	var reply func() (ipc.Type, any)
	switch q := m.Payload.(type) {
	case *ipc.DstQuery:
		f := m.TakeFile(0)
		reply = func() (ipc.Type, any) {
			defer f.Close()
			return ipc.MsgDstAnswer, s.answer(q, f)
		}
	case *ipc.DnsblQuery:
		reply = func() (ipc.Type, any) {
			a := dnsbl(s.nameservers(), cfg.DnsblZones(), q.Addr, timeout)
			s.env.Log.Debugf("[%d] dnsbl %v: listed in %q %s (%s)", q.ID, q.Addr, a.Zone, a.Answer, a.Err)
			return ipc.MsgDnsblAnswer, a
		}
	case *ipc.SpfQuery:
		reply = func() (ipc.Type, any) {
			trace := func(f string, a ...any) { s.env.Log.Debugf("[%d] spf: "+f, append([]any{q.ID}, a...)...) }
			return ipc.MsgSpfAnswer, spfCheck(s.nameservers(), q, timeout, trace)
		}
	default:
		m.Close()
		s.env.Log.Errf("unexpected %v from %s: closing the link", m.Type, p.Name)
		p.Close()
		return
	}
	go func() {
		t, a := reply()
		if err := p.Reply(m, t, a); err != nil && !errors.Is(err, context.Canceled) {
			s.env.Log.Debugf("reply to %s: %v", p.Name, err)
		}
	}()
}
