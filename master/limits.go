package master

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/loadavg"
	"smtp-gated/ipc"
)

// The limits master keeps across session workers besides max_connections
// and max_per_host (admission.go): max_per_ident, counted when a session
// learns its ident; max_load, at admission; the lock_on maxhost event,
// sent to lockd; and the smtpgatectl commands that lockd answers.

// identKey is a client address and ident.
type identKey struct {
	addr  netip.Addr
	ident string
}

// limits is admission's state for max_per_ident and max_load. The maps
// are guarded by admission.mu.
type limits struct {
	perIdent map[identKey]int
	identOf  map[uint64]identKey // session id → its ident's key

	// The load average is read at most once a second.
	loadAt   atomic.Int64  // unix nanoseconds of the reading
	loadBits atomic.Uint64 // math.Float64bits of the reading
	loadErr  atomic.Bool   // reading failed (logged once)
}

// lockdTimeout bounds master's calls to lockd.
const lockdTimeout = 5 * time.Second

// identQuery answers a worker's IdentQuery (admission.countIdent); a
// question about another worker's session is a breach.
func (m *master) identQuery(p *proc, pe *ipc.Peer, msg *ipc.Msg, q *ipc.IdentQuery) {
	a, err := m.adm.countIdent(m.cfg.Load(), p, q.ID, q.Ident)
	if err != nil {
		msg.Close()
		m.sup.breach(p, pe, err.Error())
		return
	}
	if err := pe.Reply(msg, ipc.MsgIdentAnswer, a); err != nil {
		m.log.Debugf("ident answer to %v: %v", p, err)
	}
}

// countIdent counts ident for session id of worker p: exactly, under
// admission's lock, whichever worker asks. A session over max_per_ident
// is not counted; the worker refuses it. The error is set when the
// session is another worker's.
func (a *admission) countIdent(cfg *config.Config, p *proc, id uint64, ident string) (*ipc.IdentAnswer, error) {
	ans := &ipc.IdentAnswer{}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[id]
	switch {
	case ok && s.worker != p:
		return nil, fmt.Errorf("ident of session %d, which is %v's", id, s.worker)
	case !ok:
		ans.Err = "no such session"
	case a.lim.identOf[id] != (identKey{}):
		ans.Err = "ident already counted"
	default:
		if s.ident == "" && ident != "" {
			// What lockd checks the session's requests against.
			s.ident = ident
			a.register(id, s)
		}
		if a.lim.perIdent == nil {
			a.lim.perIdent = make(map[identKey]int)
			a.lim.identOf = make(map[uint64]identKey)
		}
		k := identKey{s.src.Addr(), ident}
		n := a.lim.perIdent[k]
		if cfg.MaxPerIdent > 0 && uint64(n) >= cfg.MaxPerIdent {
			ans.Over, ans.Count = true, n
			break
		}
		a.lim.perIdent[k] = n + 1
		a.lim.identOf[id] = k
		ans.Count = n + 1
	}
	return ans, nil
}

// forgetIdent uncounts the ident of session id. Called with a.mu held.
func (a *admission) forgetIdent(id uint64) {
	k, ok := a.lim.identOf[id]
	if !ok {
		return
	}
	delete(a.lim.identOf, id)
	if a.lim.perIdent[k]--; a.lim.perIdent[k] <= 0 {
		delete(a.lim.perIdent, k)
	}
}

// overLoad reports whether the load average is above max_load (0: no
// limit). A load average that cannot be read does not refuse anyone.
func (a *admission) overLoad(cfg *config.Config) bool {
	if cfg.MaxLoad <= 0 {
		return false
	}
	now := time.Now().UnixNano()
	if now-a.lim.loadAt.Load() >= int64(time.Second) {
		a.lim.loadAt.Store(now)
		l, err := loadavg.Get()
		if err != nil {
			if !a.lim.loadErr.Swap(true) {
				a.log.Warningf("max_load: %v: not applied", err)
			}
			l = 0
		}
		a.lim.loadBits.Store(math.Float64bits(l))
	}
	return a.load() > cfg.MaxLoad
}

// load is the load average overLoad last read.
func (a *admission) load() float64 { return math.Float64frombits(a.lim.loadBits.Load()) }

// rejectEvent refuses a connection admit did not admit. A max_per_host
// refusal is an event for lockd first (lock_on maxhost, action_script),
// so that the lock exists before the client reads the refusal.
func (m *master) rejectEvent(c *net.TCPConn, code int, text, by string, src, local netip.AddrPort, id uint64) {
	if by == "maxhost" {
		m.found(&ipc.Found{Event: config.LockMaxHost, ID: id, Client: src, Local: local, Start: time.Now().Unix()})
	}
	reject(c, m.cfg.Load(), code, text)
}

// found tells lockd of an event, when lockd would do something with it:
// a lock (lock_on), or the action script. It waits (bounded) for lockd.
func (m *master) found(f *ipc.Found) {
	if !m.cfg.Load().WantsEvent(f.Event) {
		return
	}
	r, err := m.callLockd(ipc.MsgFound, f, ipc.MsgAck)
	if err != nil {
		m.log.Warningf("[%d] telling lockd of %s from %v: %v", f.ID, f.Event, f.Client, err)
		return
	}
	if a := r.Payload.(*ipc.Ack); a.Err != "" {
		m.log.Warningf("[%d] lockd: %s from %v: %s", f.ID, f.Event, f.Client, a.Err)
	}
}

// callLockd calls lockd on master's own link to it.
func (m *master) callLockd(t ipc.Type, v any, want ipc.Type) (*ipc.Msg, error) {
	peer := m.sup.lockdPeer()
	if peer == nil {
		return nil, errLockdDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), lockdTimeout)
	defer cancel()
	return peer.Call(ctx, t, v, want)
}

type lockdError string

func (e lockdError) Error() string { return string(e) }

const errLockdDown = lockdError("lockd is not running (restarting?)")

// lockdCommand passes a control command lockd answers (ipc.CtlCommand
// Lockd) to it; command has checked the caller's privileges.
func (m *master) lockdCommand(req *ipc.CtlRequest, uid int) *ipc.CtlReply {
	r, err := m.callLockd(ipc.MsgLockdCtl, &ipc.LockdCtl{Command: req.Command, Args: req.Args, UID: uid}, ipc.MsgLockdReply)
	if err != nil {
		return reply(ipc.CtlFailed, "%s: lockd: %v", req.Command, err)
	}
	return r.Payload.(*ipc.CtlReply)
}
