package master

import (
	"fmt"
	"sync/atomic"

	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// Master is the authority on sessions: it knows which worker it handed
// each one to, from which client address, with which local address and,
// once a worker asked (IdentQuery), with which ident. lockd acts only for
// a session master registered to the worker that asks, with that client
// (lockd/trust.go); a worker reports only its own sessions. A worker that
// breaks these rules is taken for compromised: it is killed and restarted.

// trustQueue bounds the registrations waiting to reach lockd. A
// registration that does not fit is dropped: lockd asks master about a
// session it does not know (MsgSessionAsk), so nothing is lost but time.
const trustQueue = 4096

// trustMsg is one registration for lockd.
type trustMsg struct {
	t ipc.Type
	v any
}

// registrar sends master's registrations to lockd, in order, on one
// goroutine, so that admission never waits for lockd.
type registrar struct {
	q       chan trustMsg
	dropped atomic.Uint64 // registrations that did not fit
}

// startRegistrar starts the goroutine that feeds lockd.
func (m *master) startRegistrar() {
	m.reg.q = make(chan trustMsg, trustQueue)
	go func() {
		for {
			var r trustMsg
			select {
			case r = <-m.reg.q:
			case <-m.quit:
				return
			}
			m.mu.Lock()
			var peer *ipc.Peer
			if m.lockd != nil && m.lockd.ready {
				peer = m.lockd.peer
			}
			m.mu.Unlock()
			if peer == nil {
				continue // a new lockd asks about what it needs
			}
			if err := peer.Send(r.t, r.v); err != nil {
				m.log.Debugf("telling lockd %v: %v", r.t, err)
			}
		}
	}()
}

// tellLockd queues a registration without waiting. Safe with m.mu held.
func (m *master) tellLockd(t ipc.Type, v any) {
	if m.reg.q == nil {
		return
	}
	select {
	case m.reg.q <- trustMsg{t, v}:
	default:
		m.reg.dropped.Add(1)
	}
}

// registerLocked queues the record of session id for lockd. Called with
// m.mu held.
func (m *master) registerLocked(id uint64, s *session) {
	m.tellLockd(ipc.MsgSessionOpen, &ipc.SessionOpen{ID: id, Worker: s.worker.index,
		Client: s.src, Local: s.local, Ident: s.ident})
}

// sessionAsk answers lockd's question about a session with master's record.
func (m *master) sessionAsk(pe *ipc.Peer, msg *ipc.Msg, q *ipc.SessionAsk) {
	a := &ipc.SessionInfo{}
	m.mu.Lock()
	if s, ok := m.sessions[q.ID]; ok {
		a = &ipc.SessionInfo{Known: true, Worker: s.worker.index, Client: s.src, Local: s.local, Ident: s.ident}
	}
	m.mu.Unlock()
	if err := pe.Reply(msg, ipc.MsgSessionInfo, a); err != nil {
		m.log.Debugf("session info to lockd: %v", err)
	}
}

// breach kills session worker p, which broke rule, if pe is still its
// link; the slot restarts as after any death.
func (m *master) breach(p *proc, pe *ipc.Peer, rule string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.cmd == nil || (pe != nil && p.peer != pe) {
		return // that process is gone already
	}
	m.log.Errf("%v (pid %d) broke the rules: %s: killing it", p, p.pid, logx.Escape(rule))
	p.breached = true
	p.cmd.Process.Kill()
}

// lockdBreach is lockd's report of a worker that broke the rules.
func (m *master) lockdBreach(b *ipc.Breach) {
	m.mu.Lock()
	var p *proc
	if b.Worker >= 0 && b.Worker < len(m.sessionProcs) {
		p = m.sessionProcs[b.Worker]
	}
	m.mu.Unlock()
	if p == nil {
		m.log.Errf("lockd reports a breach by session worker %d, which does not exist", b.Worker)
		return
	}
	m.breach(p, nil, fmt.Sprintf("lockd: session %d: %s", b.ID, b.Rule))
}

// ownRows keeps the status rows of worker p that are about its own live
// sessions; a row about another worker's session, or the same session
// twice, is a breach. Worker strings are escaped.
func (m *master) ownRows(p *proc, rows []ipc.SessionRow) ([]ipc.SessionRow, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := make(map[uint64]bool, len(rows))
	out := rows[:0]
	for _, r := range rows {
		if seen[r.ID] {
			return nil, fmt.Errorf("status row for session %d twice", r.ID)
		}
		seen[r.ID] = true
		s, ok := m.sessions[r.ID]
		if ok && s.worker != p {
			return nil, fmt.Errorf("status row for session %d, which is %v's", r.ID, s.worker)
		}
		if !ok {
			continue // ended meanwhile, or never was: not shown
		}
		r.Ident = logx.Escape(r.Ident)
		out = append(out, r)
	}
	return out, nil
}
