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

// start starts the goroutine that feeds lockd, on the link lockd gives
// (nil while lockd is not ready), until quit is closed.
func (r *registrar) start(quit <-chan struct{}, lockd func() *ipc.Peer, log *logx.Logger) {
	r.q = make(chan trustMsg, trustQueue)
	go func() {
		for {
			var m trustMsg
			select {
			case m = <-r.q:
			case <-quit:
				return
			}
			peer := lockd()
			if peer == nil {
				continue // a new lockd asks about what it needs
			}
			if err := peer.Send(m.t, m.v); err != nil {
				log.Debugf("telling lockd %v: %v", m.t, err)
			}
		}
	}()
}

// tell queues a registration without waiting. Safe with any lock held.
func (r *registrar) tell(t ipc.Type, v any) {
	if r.q == nil {
		return
	}
	select {
	case r.q <- trustMsg{t, v}:
	default:
		r.dropped.Add(1)
	}
}

// register queues the record of session id for lockd. Called with a.mu
// held.
func (a *admission) register(id uint64, s *session) {
	a.reg.tell(ipc.MsgSessionOpen, &ipc.SessionOpen{ID: id, Worker: s.worker.index,
		Client: s.src, Local: s.local, Ident: s.ident})
}

// sessionAsk answers lockd's question about a session with master's record.
func (m *master) sessionAsk(pe *ipc.Peer, msg *ipc.Msg, q *ipc.SessionAsk) {
	if err := pe.Reply(msg, ipc.MsgSessionInfo, m.adm.sessionInfo(q.ID)); err != nil {
		m.log.Debugf("session info to lockd: %v", err)
	}
}

// sessionInfo is admission's record of session id, as lockd gets it.
func (a *admission) sessionInfo(id uint64) *ipc.SessionInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[id]
	if !ok {
		return &ipc.SessionInfo{}
	}
	return &ipc.SessionInfo{Known: true, Worker: s.worker.index, Client: s.src, Local: s.local, Ident: s.ident}
}

// lockdBreach is lockd's report of a worker that broke the rules.
func (m *master) lockdBreach(b *ipc.Breach) {
	if b.Worker < 0 || b.Worker >= len(m.sup.workers) {
		m.log.Errf("lockd reports a breach by session worker %d, which does not exist", b.Worker)
		return
	}
	m.sup.breach(m.sup.workers[b.Worker], nil, fmt.Sprintf("lockd: session %d: %s", b.ID, b.Rule))
}

// ownRows keeps the status rows of worker p that are about its own live
// sessions; a row about another worker's session, or the same session
// twice, is a breach. Worker strings are escaped.
func (a *admission) ownRows(p *proc, rows []ipc.SessionRow) ([]ipc.SessionRow, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := make(map[uint64]bool, len(rows))
	out := rows[:0]
	for _, r := range rows {
		if seen[r.ID] {
			return nil, fmt.Errorf("status row for session %d twice", r.ID)
		}
		seen[r.ID] = true
		s, ok := a.sessions[r.ID]
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
