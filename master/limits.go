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
// and max_per_host (accept.go): max_per_ident, counted when a session
// learns its ident; max_load, at admission; the lock_on maxhost event,
// sent to lockd; and the smtpgatectl commands that lockd answers.

// identKey is a client address and ident.
type identKey struct {
	addr  netip.Addr
	ident string
}

// limits is master's state for max_per_ident and max_load. The maps are
// guarded by master.mu.
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

// identQuery counts the ident of a session (IdentQuery): exactly, under
// master's lock, whichever worker asks. A session over max_per_ident is
// not counted; the worker refuses it.
func (m *master) identQuery(p *proc, pe *ipc.Peer, msg *ipc.Msg, q *ipc.IdentQuery) {
	cfg := m.cfg.Load()
	a := &ipc.IdentAnswer{}
	m.mu.Lock()
	s, ok := m.sessions[q.ID]
	if ok && s.worker != p {
		m.mu.Unlock()
		msg.Close()
		m.breach(p, pe, fmt.Sprintf("ident of session %d, which is %v's", q.ID, s.worker))
		return
	}
	switch {
	case !ok:
		a.Err = "no such session"
	case m.lim.identOf[q.ID] != (identKey{}):
		a.Err = "ident already counted"
	default:
		if s.ident == "" && q.Ident != "" {
			// What lockd checks the session's requests against.
			s.ident = q.Ident
			m.registerLocked(q.ID, s)
		}
		if m.lim.perIdent == nil {
			m.lim.perIdent = make(map[identKey]int)
			m.lim.identOf = make(map[uint64]identKey)
		}
		k := identKey{s.src.Addr(), q.Ident}
		n := m.lim.perIdent[k]
		if cfg.MaxPerIdent > 0 && uint64(n) >= cfg.MaxPerIdent {
			a.Over, a.Count = true, n
			break
		}
		m.lim.perIdent[k] = n + 1
		m.lim.identOf[q.ID] = k
		a.Count = n + 1
	}
	m.mu.Unlock()
	if err := pe.Reply(msg, ipc.MsgIdentAnswer, a); err != nil {
		m.log.Debugf("ident answer to %v: %v", p, err)
	}
}

// forgetIdent uncounts the ident of session id. Called with m.mu held.
func (m *master) forgetIdent(id uint64) {
	k, ok := m.lim.identOf[id]
	if !ok {
		return
	}
	delete(m.lim.identOf, id)
	if m.lim.perIdent[k]--; m.lim.perIdent[k] <= 0 {
		delete(m.lim.perIdent, k)
	}
}

// overLoad reports whether the load average is above max_load (0: no
// limit). A load average that cannot be read does not refuse anyone.
func (m *master) overLoad(cfg *config.Config) bool {
	if cfg.MaxLoad <= 0 {
		return false
	}
	now := time.Now().UnixNano()
	if now-m.lim.loadAt.Load() >= int64(time.Second) {
		m.lim.loadAt.Store(now)
		l, err := loadavg.Get()
		if err != nil {
			if !m.lim.loadErr.Swap(true) {
				m.log.Warningf("max_load: %v: not applied", err)
			}
			l = 0
		}
		m.lim.loadBits.Store(math.Float64bits(l))
	}
	return m.load() > cfg.MaxLoad
}

// load is the load average overLoad last read.
func (m *master) load() float64 { return math.Float64frombits(m.lim.loadBits.Load()) }

// rejectEvent refuses a connection admit did not admit. A max_per_host
// refusal is an event for lockd first (lock_on maxhost, action_script),
// so that the lock exists before the client reads the refusal.
func (m *master) rejectEvent(c *net.TCPConn, code int, text, by string, src, local netip.AddrPort, id uint64) {
	if by == "maxhost" {
		m.found(&ipc.Found{Event: config.LockMaxHost, ID: id, Client: src, Local: local, Start: time.Now().Unix()})
	}
	m.reject(c, code, text)
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
	m.mu.Lock()
	var peer *ipc.Peer
	if m.lockd != nil && m.lockd.ready {
		peer = m.lockd.peer
	}
	m.mu.Unlock()
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
