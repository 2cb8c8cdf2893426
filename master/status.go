package master

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"smtp-gated/ipc"
)

// queryTimeout bounds how long master waits for a worker's session list.
const queryTimeout = 3 * time.Second

// liveRow is one live session as the statefile and `smtpgatectl sessions`
// show it: master's record (id, source, worker, start) joined with what
// the worker reports (state, target, bytes, ...).
type liveRow struct {
	ipc.SessionRow
	Src    netip.AddrPort
	Start  time.Time
	Worker string // "session 1"
	Pid    int    // the worker's pid
	Slot   int    // the session's slot number
}

// opsState is what master counts for the status file and `smtpgatectl
// stats`, on top of counters. Guarded by master.mu.
type opsState struct {
	// closes counts ended sessions by the cause of their CLOSE line.
	closes      map[string]uint64
	clientBytes uint64 // received from clients, sessions that ended
	serverBytes uint64 // received from servers, sessions that ended
	spam        uint64 // messages found spam, refused or passed
	stateMu     sync.Mutex
}

// countClose books one CLOSE line with cause by. Called with m.mu held.
func (m *master) countClose(by string) {
	if m.ops.closes == nil {
		m.ops.closes = make(map[string]uint64)
	}
	m.ops.closes[by]++
}

// countEnd books a session a worker reports ended. Called with m.mu held.
// What happened in it counts once per session, whatever the worker says.
func (m *master) countEnd(e *ipc.SessionEnd) {
	m.countClose(string(e.By))
	m.ops.clientBytes += e.ClientRx
	m.ops.serverBytes += e.ServerRx
	// A message is found spam once: no more than the session's
	// transactions, whatever the worker says.
	m.ops.spam += uint64(min(max(e.Spam, 0), max(e.Transacts, 0)))
	c := &m.count
	one := func(n *uint64, yes bool) {
		if yes {
			*n++
		}
	}
	one(&c.authOK, e.Auth&2 != 0)
	one(&c.authFail, e.Auth&4 != 0)
	one(&c.noAuth, e.Events&ipc.EventNoAuth != 0)
	one(&c.spf, e.Events&ipc.EventSPF != 0)
	one(&c.regex, e.Events&ipc.EventRegex != 0)
	one(&c.earlytalk, e.Events&ipc.EventEarlytalk != 0)
	one(&c.pipeline, e.Events&ipc.EventPipeline != 0)
	// A rate of connections closes the session (rejects.rate); other
	// rate limits refuse commands.
	one(&c.rateRefused, e.Events&ipc.EventRatelimit != 0 && e.By != ipc.CloseRatelimit)
}

// takeSlot gives a new session a slot number below max_connections,
// from the highest down as 1.4 numbered them; a slot is used again once
// its session ended. Called with m.mu held.
func (m *master) takeSlot() int {
	if n := len(m.freeSlots); n > 0 {
		s := m.freeSlots[n-1]
		m.freeSlots = m.freeSlots[:n-1]
		return s
	}
	m.slotsUsed++
	return m.maxConnections - m.slotsUsed
}

// liveSessions asks every session worker for its sessions and joins the
// answers with master's books. A session the worker no longer reports has
// just ended (its SessionEnd is on the way) and is left out; one a worker
// that does not answer serves is shown with master's part only (state
// "?"). The rows are sorted by session id.
func (m *master) liveSessions() []liveRow {
	m.mu.Lock()
	type target struct {
		p    *proc
		peer *ipc.Peer
		pid  int
	}
	var workers []target
	now := time.Now()
	for _, p := range m.sessionProcs {
		// One that does not answer the heartbeat would not answer this.
		if p.ready && p.peer != nil && !p.late(now) {
			workers = append(workers, target{p, p.peer, p.pid})
		}
	}
	m.mu.Unlock()

	type answer struct {
		p    *proc
		rows []ipc.SessionRow
		err  error
	}
	answers := make(chan answer, len(workers))
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	for _, w := range workers {
		go func() {
			r, err := w.peer.Call(ctx, ipc.MsgSessions, &ipc.SessionsQuery{}, ipc.MsgSessionList)
			if err != nil {
				answers <- answer{p: w.p, err: err}
				return
			}
			answers <- answer{p: w.p, rows: r.Payload.(*ipc.SessionList).Rows}
		}()
	}
	reported := map[uint64]ipc.SessionRow{}
	answered := map[*proc]bool{}
	for range workers {
		a := <-answers
		if a.err != nil {
			m.log.Warningf("status: %v did not list its sessions: %v", a.p, a.err)
			continue
		}
		rows, err := m.ownRows(a.p, a.rows)
		if err != nil {
			m.breach(a.p, nil, err.Error())
			continue
		}
		answered[a.p] = true
		for _, r := range rows {
			reported[r.ID] = r
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	rows := make([]liveRow, 0, len(m.sessions))
	for id, s := range m.sessions {
		r, ok := reported[id]
		if !ok {
			if answered[s.worker] {
				continue
			}
			r = ipc.SessionRow{ID: id, State: ipc.StateUnknown}
		}
		rows = append(rows, liveRow{SessionRow: r, Src: s.src, Start: s.start, Worker: s.worker.String(), Pid: s.worker.pid, Slot: s.slot})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	return rows
}

// errNoSession: kill of a session master does not know.
var errNoSession = errors.New("no such session")

// killSession asks the worker of session id to end it, and waits (bounded)
// until the worker reports its end.
func (m *master) killSession(id uint64) error {
	m.mu.Lock()
	s, ok := m.sessions[id]
	var peer *ipc.Peer
	if ok {
		peer = s.worker.peer
	}
	m.mu.Unlock()
	if !ok {
		return errNoSession
	}
	if peer == nil {
		return fmt.Errorf("%v is not running", s.worker)
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	r, err := peer.Call(ctx, ipc.MsgKillSession, &ipc.KillSession{ID: id}, ipc.MsgAck)
	if err != nil {
		return fmt.Errorf("%v: %w", s.worker, err)
	}
	if a := r.Payload.(*ipc.Ack); a.Err != "" {
		// The worker ended it on its own meanwhile.
		return errNoSession
	}
	select {
	case <-s.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("session %d did not end within 10 s", id)
	}
}
