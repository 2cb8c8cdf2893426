// Package session is a session worker: it serves the SMTP sessions master
// hands it, a goroutine each. It asks the lookup process where a
// connection was going, connects to the MTA and relays the dialogue.
package session

import (
	"sync"
	"sync/atomic"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// worker is one session worker process.
type worker struct {
	env    *child.Env
	log    *logx.Logger
	cfg    atomic.Pointer[config.Config]
	master *ipc.Peer
	lookup atomic.Pointer[ipc.Peer]
	wg     sync.WaitGroup
}

// Run serves until master closes the link. A session worker is always
// chrooted: into chroot_path, or into an empty directory.
func Run(env *child.Env) error {
	w := &worker{env: env, log: env.Log}
	w.cfg.Store(env.Cfg)
	dir := env.Cfg.ChrootPath
	if dir == "" {
		dir = env.Hello.EmptyDir
	}
	if err := env.Drop(dir); err != nil {
		return err
	}
	w.master = ipc.NewPeer(env.Master, "master", w.fromMaster)
	if err := env.Ready(); err != nil {
		return err
	}
	env.LinkEnded(w.master.Run())
	return nil
}

// fromMaster is the dispatch of messages from master.
func (w *worker) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.NewSession:
		f := m.TakeFile(0)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.serve(v, f)
		}()
	case *ipc.Config:
		if cfg := w.env.Reconfigure(p, m, v); cfg != nil {
			w.cfg.Store(cfg)
		}
	case *ipc.PeerLink:
		f := m.TakeFile(0)
		defer f.Close()
		if v.Role != ipc.RoleLookup {
			w.env.Fatalf("unexpected %v for role %q from master", m.Type, v.Role)
		}
		conn, err := ipc.NewConn(f)
		if err != nil {
			w.env.Fatalf("link to lookup: %v", err)
		}
		lp := ipc.NewPeer(conn, "lookup", w.fromLookup)
		if old := w.lookup.Swap(lp); old != nil {
			old.Close()
		}
		go func() {
			if err := lp.Run(); err != nil && w.lookup.Load() == lp {
				w.log.Warningf("link to lookup: %v", err)
			}
			lp.Close()
		}()
	default:
		m.Close()
		w.env.Fatalf("unexpected %v from master", m.Type)
	}
}

// fromLookup receives what lookup sends other than replies: nothing is
// expected, so the link is dropped (master restarts lookup if it is sick).
func (w *worker) fromLookup(p *ipc.Peer, m *ipc.Msg) {
	m.Close()
	w.log.Errf("unexpected %v from lookup: closing the link", m.Type)
	p.Close()
}
