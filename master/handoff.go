package master

import (
	"context"
	"net"
	"os/exec"
	"time"

	"smtp-gated/ipc"
)

// The hand-off of accepted connections to session workers never waits for
// a worker: admit puts the session in the chosen worker's queue, and a
// sender of that worker's own writes it on the link. A worker that does
// not keep up is skipped for new clients, one that stops answering the
// heartbeat is killed, and the sessions it never took go to another.
const (
	// handQueue is the length of a worker's queue of sessions waiting
	// for its sender; a worker whose queue is full gets no new sessions.
	handQueue = 256
	// maxUntaken: a worker with this many sessions handed but not yet
	// taken (MsgSessionTaken) gets no new sessions.
	maxUntaken = 256
	// pingEvery is the heartbeat's period. A worker that has not
	// answered for pongLate gets no new sessions; one that has not
	// answered for pongDead is killed and restarted.
	pingEvery = time.Second
	pongLate  = 2 * time.Second
	pongDead  = 10 * time.Second
)

// link is one running session worker's hand-off state: its queue and the
// end of its sender and heartbeat. A new one is made for every process
// the slot runs.
type link struct {
	queue chan uint64   // session ids for the sender
	stop  chan struct{} // closed when the process has exited
}

// late reports whether worker p has not answered the heartbeat for
// pongLate.
func (p *proc) late(now time.Time) bool {
	return now.Sub(time.Unix(0, p.lastPong.Load())) > pongLate
}

// admits reports whether session worker p may get a new session now;
// lateOK disregards the heartbeat. Called with m.mu held.
func (p *proc) admits(now time.Time, lateOK bool) bool {
	return p.ready && p.link != nil && len(p.link.queue) < cap(p.link.queue) &&
		p.untaken < maxUntaken && (lateOK || !p.late(now))
}

// pickWorker chooses the worker for a new session: the one with the fewest
// sessions among those that admit one, other than not. When every worker
// is late (a machine so loaded that none answered in time, master
// included), one with room is chosen all the same: the session waits in
// its queue, and is handed to another if that worker is killed. A worker
// that holds as many sessions as its descriptors allow gets none more
// (nofile.go). Nil when none has room. Called with m.mu held.
func (m *master) pickWorker(not *proc) *proc {
	now := time.Now()
	for _, lateOK := range []bool{false, true} {
		var w *proc
		for _, p := range m.sessionProcs {
			if p != not && p.admits(now, lateOK) && m.room(p) && (w == nil || p.sessions < w.sessions) {
				w = p
			}
		}
		if w != nil {
			return w
		}
	}
	return nil
}

// enqueue books session s (id) as worker w's, tells lockd so, and puts it
// in w's queue.
// The caller found room in it with pickWorker, under the same hold of
// m.mu, and only enqueue adds to a queue: the send does not wait.
// Called with m.mu held.
func (m *master) enqueue(w *proc, id uint64, s *session) {
	s.worker = w
	m.registerLocked(id, s)
	w.sessions++
	w.untaken++
	w.link.queue <- id
}

// sendSessions is the sender of one worker process: it writes the
// sessions of its queue on the link, each with the client socket. A write
// may wait (the worker does not read): only this goroutine waits. A write
// that fails ends the process, whose untaken sessions then go to another
// worker (rehand).
func (m *master) sendSessions(p *proc, peer *ipc.Peer, cmd *exec.Cmd, l *link) {
	for {
		var id uint64
		select {
		case <-l.stop:
			return
		case id = <-l.queue:
		}
		m.mu.Lock()
		s := m.sessions[id]
		if s == nil || s.worker != p || s.conn == nil || p.link != l {
			m.mu.Unlock()
			continue
		}
		c, ns := s.conn, s.ns
		m.mu.Unlock()
		if err := handOff(peer, c, ns); err != nil {
			select {
			case <-l.stop:
			default:
				m.log.Errf("hand-off of session %d to %v (pid %d): %v; killing it", id, p, cmd.Process.Pid, err)
				cmd.Process.Kill()
			}
			return
		}
	}
}

// handOff sends the client socket to a worker. The kernel duplicates the
// descriptor on its way; master keeps its copy until the worker says it
// took the session.
func handOff(peer *ipc.Peer, c *net.TCPConn, ns *ipc.NewSession) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = peer.Send(ipc.MsgNewSession, ns, int(fd)) }); err != nil {
		return err
	}
	return serr
}

// heartbeat pings one worker process every pingEvery until it exits, and
// kills it when it has not answered for pongDead. A ping whose write
// waits (the link is full) is not repeated until it is written.
func (m *master) heartbeat(p *proc, peer *ipc.Peer, cmd *exec.Cmd, l *link) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	inflight := make(chan struct{}, 1)
	wasLate := false
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		silent := now.Sub(time.Unix(0, p.lastPong.Load()))
		switch {
		case silent >= pongDead:
			m.log.Errf("%v (pid %d) has not answered for %v: killing it", p, cmd.Process.Pid, silent.Round(time.Second))
			cmd.Process.Kill()
			return
		case silent > pongLate && !wasLate:
			m.log.Warningf("%v (pid %d) has not answered for %v: no new sessions for it", p, cmd.Process.Pid, silent.Round(time.Second))
			wasLate = true
		case silent <= pongLate && wasLate:
			m.log.Noticef("%v (pid %d) answers again", p, cmd.Process.Pid)
			wasLate = false
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue
		}
		go func() {
			defer func() { <-inflight }()
			ctx, cancel := context.WithTimeout(context.Background(), pongDead)
			defer cancel()
			r, err := peer.Call(ctx, ipc.MsgPing, &ipc.Ping{}, ipc.MsgPong)
			if err != nil {
				return
			}
			r.Close()
			select {
			case <-l.stop:
			default:
				p.lastPong.Store(time.Now().UnixNano())
			}
		}()
	}
}

// taken books a worker's MsgSessionTaken: master closes its copy of the
// client socket. It returns false when the session is not one handed to
// that worker and not yet taken: a protocol violation.
func (m *master) taken(p *proc, id uint64) bool {
	m.mu.Lock()
	s, ok := m.sessions[id]
	if !ok || s.worker != p || s.conn == nil {
		m.mu.Unlock()
		return false
	}
	c := s.conn
	s.conn, s.ns = nil, nil
	p.untaken--
	m.mu.Unlock()
	c.Close()
	return true
}

// rehand gives the sessions that worker p (which exited) never took to
// other workers, or answers them 421 when none admits one. Called with
// m.mu held.
func (m *master) rehand(p *proc) (moved, refused int) {
	cfg := m.cfg.Load()
	for id, s := range m.sessions {
		if s.worker != p || s.conn == nil {
			continue
		}
		if !m.stoppingLocked() {
			if w := m.pickWorker(p); w != nil {
				p.sessions--
				p.untaken--
				m.enqueue(w, id, s)
				moved++
				m.log.Infof("[%d] %v never took it: handed to %v", id, p, w)
				continue
			}
		}
		c := s.conn
		s.conn, s.ns = nil, nil
		p.untaken--
		m.forget(id)
		m.countClose("handoff")
		refused++
		m.logClose("handoff", s.src, int64(time.Since(s.start)/time.Second), id)
		go m.reject(c, 421, cfg.MsgTempUnavail)
	}
	return moved, refused
}
