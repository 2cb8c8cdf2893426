// Package session is a session worker: it serves the SMTP sessions master
// hands it, a goroutine each. It asks the lookup process where a
// connection was going, connects to the MTA and relays the dialogue.
package session

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/priv"
	"smtp-gated/ipc"
)

// worker is one session worker process.
type worker struct {
	env     *child.Env
	log     *logx.Logger
	cfg     atomic.Pointer[config.Config]
	master  *ipc.Peer
	lookup  atomic.Pointer[ipc.Peer]
	scanner atomic.Pointer[ipc.Peer]
	lockd   atomic.Pointer[ipc.Peer]
	wg      sync.WaitGroup
	spool   *spool
	live    sessions

	// lockCache is what the worker keeps of lockd's answers
	// (lockcache.go).
	lockCache atomic.Pointer[lockCache]
}

// Run serves until master closes the link. A session worker is always
// chrooted: into spool_path, where it makes its spool files by name; when
// there is no usable spool directory, into chroot_path or an empty
// directory (and messages are refused).
func Run(env *child.Env) error {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(maxProcs(runtime.NumCPU(), env.Cfg.SessionWorkers))
	}
	w := &worker{env: env, log: env.Log}
	w.cfg.Store(env.Cfg)
	dir := env.Cfg.ChrootPath
	if dir == "" {
		dir = env.Hello.EmptyDir
	}
	uid, gid := -1, -1
	if id, err := priv.Resolve(env.Cfg.SetUser, env.Cfg.SetGroup); err == nil {
		uid, gid = id.UID, id.GID
	}
	w.spool = prepareSpool(spoolDir(env.Cfg), env.Cfg.SpoolPerm, uid, gid)
	if w.spool.err != nil {
		w.log.Errf("%v: messages cannot be scanned and will be refused", w.spool.err)
	} else {
		dir = w.spool.host
	}
	root := os.Geteuid() == 0
	if err := env.Drop(dir); err != nil {
		return err
	}
	if root {
		w.spool.chrooted()
	}
	paths := map[string]string{}
	if w.spool.err == nil {
		paths["spool_path"] = w.spool.dir
	}
	if err := env.Confine(paths); err != nil {
		return err
	}
	w.master = ipc.NewPeer(env.Master, "master", w.fromMaster)
	if err := env.Ready(); err != nil {
		return err
	}
	env.LinkEnded(w.master.Run())
	return nil
}

// maxProcs is how many threads of a worker run Go code at once: the
// CPUs shared among the session workers (session_workers, 0 is one per
// CPU), at least one. A worker alone on its CPU wakes no other thread
// each time a session's goroutine waits for a socket or another: most
// of a session's work is system calls, and every hand-off between
// threads is more of them (futex, nanosleep).
func maxProcs(cpus int, workers uint64) int {
	if workers == 0 || workers > uint64(cpus) {
		return 1
	}
	return cpus / int(workers)
}

// fromMaster is the dispatch of messages from master.
func (w *worker) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.NewSession:
		f := m.TakeFile(0)
		c := w.newConn(v)
		// Before anything is said to the client: until master reads
		// this, it may give the session to another worker should this
		// one die.
		if err := p.Send(ipc.MsgSessionTaken, &ipc.SessionTaken{ID: v.ID}); err != nil {
			w.env.Fatalf("telling master session %d was taken: %v", v.ID, err)
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.serve(c, f)
		}()
	case *ipc.Ping:
		if err := p.Reply(m, ipc.MsgPong, &ipc.Pong{}); err != nil {
			w.env.Fatalf("reply to master: %v", err)
		}
	case *ipc.SessionsQuery:
		if err := p.Reply(m, ipc.MsgSessionList, w.rows(v)); err != nil {
			w.env.Fatalf("reply to master: %v", err)
		}
	case *ipc.KillSession:
		if err := p.Reply(m, ipc.MsgAck, w.killSession(v)); err != nil {
			w.env.Fatalf("reply to master: %v", err)
		}
	case *ipc.Config:
		if cfg := w.env.Reconfigure(p, m, v); cfg != nil {
			w.cfg.Store(cfg)
		}
	case *ipc.PeerLink:
		f := m.TakeFile(0)
		defer f.Close()
		var slot *atomic.Pointer[ipc.Peer]
		switch v.Role {
		case ipc.RoleLookup:
			slot = &w.lookup
		case ipc.RoleScanner:
			slot = &w.scanner
		case ipc.RoleLockd:
			slot = &w.lockd
		default:
			w.env.Fatalf("unexpected %v for role %q from master", m.Type, v.Role)
		}
		conn, err := ipc.NewConn(f)
		if err != nil {
			w.env.Fatalf("link to %s: %v", v.Role, err)
		}
		h := w.fromService
		if v.Role == ipc.RoleLockd {
			h = w.fromLockd // its generation page
		}
		lp := ipc.NewPeer(conn, v.Role, h)
		if old := slot.Swap(lp); old != nil {
			old.Close()
		}
		go func() {
			if err := lp.Run(); err != nil && slot.Load() == lp {
				w.log.Warningf("link to %s: %v", v.Role, err)
			}
			lp.Close()
		}()
	default:
		m.Close()
		w.env.Fatalf("unexpected %v from master", m.Type)
	}
}

// fromService receives what lookup or scanner send other than replies:
// nothing is expected, so the link is dropped.
func (w *worker) fromService(p *ipc.Peer, m *ipc.Msg) {
	m.Close()
	w.log.Errf("unexpected %v from %s: closing the link", m.Type, p.Name)
	p.Close()
}
