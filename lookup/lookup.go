// Package lookup is the lookup process: it answers session workers' "where
// was this connection going?" for the NAT modes, and (later) does the DNS
// work. It holds no client state; each query stands alone.
package lookup

import (
	"context"
	"errors"
	"fmt"
	"io"
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
}

// Run serves until master closes the link.
func Run(env *child.Env) error {
	s := &server{env: env}
	s.cfg.Store(env.Cfg)
	// Look-ups need nothing from the file system: an empty root will do.
	dir := env.Cfg.ChrootPath
	if dir == "" {
		dir = env.Hello.EmptyDir
	}
	if err := env.Drop(dir); err != nil {
		return err
	}
	if err := env.Ready(); err != nil {
		return err
	}
	master := ipc.NewPeer(env.Master, "master", s.fromMaster)
	env.LinkEnded(master.Run())
	return nil
}

// original finds the original destination of the connection on f.
// Kernel-specific modes live in original_*.go.
func original(mode config.Mode, f *os.File, local netip.AddrPort) (netip.AddrPort, error) {
	switch mode {
	case config.ModeNetfilter:
		return netfilterDst(f, local)
	case config.ModeGetsockname, config.ModeIpfw:
		return sockname(f)
	}
	return netip.AddrPort{}, fmt.Errorf("mode %v is not supported by this build", mode)
}

// errNotFound is a look-up that found no record of the connection.
var errNotFound = errors.New("no record of this connection")

// answer does one query.
func (s *server) answer(q *ipc.DstQuery, f *os.File) *ipc.DstAnswer {
	cfg := s.cfg.Load()
	dst, err := original(cfg.Mode, f, q.Local)
	switch {
	case errors.Is(err, errNotFound):
		return &ipc.DstAnswer{Fail: ipc.LookupNotFound, Err: err.Error()}
	case err != nil:
		return &ipc.DstAnswer{Fail: ipc.LookupFailed, Err: err.Error()}
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if dst == netip.AddrPortFrom(q.Local.Addr().Unmap(), q.Local.Port()) {
		// The client connected to the proxy itself, not through the
		// redirect: relaying would connect the proxy to itself.
		return &ipc.DstAnswer{Dst: dst, Fail: ipc.LookupLoop, Err: "destination is the proxy itself"}
	}
	return &ipc.DstAnswer{Dst: dst}
}

// fromMaster is the dispatch of messages from master.
func (s *server) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.Config:
		if cfg := s.env.Reconfigure(p, m, v); cfg != nil {
			s.cfg.Store(cfg)
		}
	case *ipc.PeerLink:
		f := m.TakeFile(0)
		defer f.Close()
		if v.Role != ipc.RoleSession {
			s.env.Fatalf("unexpected %v for role %q from master", m.Type, v.Role)
		}
		conn, err := ipc.NewConn(f)
		if err != nil {
			s.env.Fatalf("link to session %d: %v", v.Index, err)
		}
		name := fmt.Sprintf("session %d", v.Index)
		sp := ipc.NewPeer(conn, name, s.fromSession)
		go func() {
			err := sp.Run()
			sp.Close()
			if !errors.Is(err, io.EOF) {
				// A session worker that sends garbage is killed by
				// master's supervision on its own errors; here the
				// link is simply dropped and logged.
				s.env.Log.Errf("link to %s: %v", name, err)
			}
		}()
	default:
		s.env.Fatalf("unexpected %v from master", m.Type)
	}
}

// fromSession is the dispatch of messages from one session worker.
func (s *server) fromSession(p *ipc.Peer, m *ipc.Msg) {
	q, ok := m.Payload.(*ipc.DstQuery)
	if !ok {
		m.Close()
		s.env.Log.Errf("unexpected %v from %s: closing the link", m.Type, p.Name)
		p.Close()
		return
	}
	f := m.TakeFile(0)
	go func() {
		defer f.Close()
		a := s.answer(q, f)
		if err := p.Reply(m, ipc.MsgDstAnswer, a); err != nil && !errors.Is(err, context.Canceled) {
			s.env.Log.Debugf("reply to %s: %v", p.Name, err)
		}
	}()
}
