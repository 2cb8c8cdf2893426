// Package lockd is the lockd process, the only writer of lock files and rate-limit files. It starts, drops its privileges and follows reloads; locking and rate limits come with that work.
package lockd

import (
	"sync/atomic"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

type server struct {
	env *child.Env
	cfg atomic.Pointer[config.Config]
}

// Run serves until master closes the link.
func Run(env *child.Env) error {
	s := &server{env: env}
	s.cfg.Store(env.Cfg)
	// Not chrooted: its sockets and files live outside any one directory.
	if err := env.Drop(""); err != nil {
		return err
	}
	if err := env.Ready(); err != nil {
		return err
	}
	master := ipc.NewPeer(env.Master, "master", s.fromMaster)
	env.LinkEnded(master.Run())
	return nil
}

// fromMaster is the dispatch of messages from master.
func (s *server) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.Config:
		if cfg := s.env.Reconfigure(p, m, v); cfg != nil {
			s.cfg.Store(cfg)
		}
	default:
		m.Close()
		s.env.Fatalf("unexpected %v from master", m.Type)
	}
}
