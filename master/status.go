package master

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
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

// liveSessions asks every session worker for its sessions and joins the
// answers with master's books. A session the worker no longer reports has
// just ended (its SessionEnd is on the way) and is left out; one a worker
// that does not answer serves is shown with master's part only (state
// "?"). The rows are sorted by session id.
func (m *master) liveSessions() []liveRow {
	// One that does not answer the heartbeat would not answer this.
	workers, pids := m.sup.answering(time.Now())
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
		rows, err := m.adm.ownRows(a.p, a.rows)
		if err != nil {
			m.sup.breach(a.p, nil, err.Error())
			continue
		}
		answered[a.p] = true
		for _, r := range rows {
			reported[r.ID] = r
		}
	}
	return m.adm.liveRows(reported, answered, pids)
}

// liveRows joins the rows workers reported with admission's books: a
// session the worker that answered no longer reports has just ended and
// is left out; one of a worker that did not answer is shown with
// admission's part only. pids are the workers' processes. The rows are
// sorted by session id.
func (a *admission) liveRows(reported map[uint64]ipc.SessionRow, answered map[*proc]bool, pids map[*proc]int) []liveRow {
	a.mu.Lock()
	defer a.mu.Unlock()
	rows := make([]liveRow, 0, len(a.sessions))
	for id, s := range a.sessions {
		r, ok := reported[id]
		if !ok {
			if answered[s.worker] {
				continue
			}
			r = ipc.SessionRow{ID: id, State: ipc.StateUnknown}
		}
		rows = append(rows, liveRow{SessionRow: r, Src: s.src, Start: s.start, Worker: s.worker.String(), Pid: pids[s.worker], Slot: s.slot})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	return rows
}

// errNoSession: kill of a session master does not know.
var errNoSession = errors.New("no such session")

// killSession asks the worker of session id to end it, and waits (bounded)
// until the worker reports its end.
func (m *master) killSession(id uint64) error {
	w, done, ok := m.adm.sessionOf(id)
	if !ok {
		return errNoSession
	}
	peer := m.sup.peerOf(w)
	if peer == nil {
		return fmt.Errorf("%v is not running", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	r, err := peer.Call(ctx, ipc.MsgKillSession, &ipc.KillSession{ID: id}, ipc.MsgAck)
	if err != nil {
		return fmt.Errorf("%v: %w", w, err)
	}
	if a := r.Payload.(*ipc.Ack); a.Err != "" {
		// The worker ended it on its own meanwhile.
		return errNoSession
	}
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("session %d did not end within 10 s", id)
	}
}

// sessionOf is the worker slot of session id, and a channel closed when
// the session ends; ok is false when there is no such session.
func (a *admission) sessionOf(id uint64) (w *proc, done <-chan struct{}, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[id]
	if !ok {
		return nil, nil, false
	}
	return s.worker, s.done, true
}
