package master

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// admission is master's books of the sessions: which are open, which
// worker slot each was handed to, how many come from each client address
// and each ident, their rows in the status file, and the counters of
// what became of them. It decides whether a new connection is admitted
// (max_connections, max_per_host, max_load, shutdown) and which session
// worker gets it, under one lock, so that the counts are exact whatever
// the number of workers.
//
// Lock order: admission.mu and supervisor.mu are never held together.
// Admission calls nothing of the supervisor. What it reads of a worker
// slot without the supervisor's lock is fixed (role, index) or published
// atomically by the supervisor (proc.link, proc.lastPong); the books it
// keeps on a slot (proc.sessions, proc.untaken) are guarded by
// admission.mu. The supervisor calls admission with its own lock
// released: handing (the sender of a worker) and workerGone (a worker
// exited).
type admission struct {
	log *logx.Logger
	cfg *atomic.Pointer[config.Config] // master's running configuration
	// maxConnections is max_connections, fixed at start; workers are
	// the session worker slots, made before any worker starts.
	maxConnections int
	workerCap      int // sessions a session worker can hold (nofile.go)
	workers        []*proc
	reg            *registrar // tells lockd of the sessions, never waits

	mu        sync.Mutex
	sessions  map[uint64]*session
	perHost   map[netip.Addr]int
	nextID    uint64
	freeSlots []int // slot numbers of sessions that ended (takeSlot)
	slotsUsed int   // slot numbers given so far
	draining  bool
	drained   chan struct{} // closed when draining and no session is left
	count     counters
	ops       opsState
	lim       limits // max_per_ident, max_load (limits.go)
	// fullWarned is when warnFull last logged.
	fullWarned time.Time
}

// session is master's record of one handed-off connection. Guarded by
// admission.mu.
type session struct {
	worker *proc
	src    netip.AddrPort
	local  netip.AddrPort
	ident  string // as the worker told it (IdentQuery), once
	start  time.Time
	slot   int           // its row in the status file
	done   chan struct{} // closed when the session is forgotten
	// conn is master's copy of the client socket and ns the hand-off
	// message, until the worker says it took the session; nil after.
	conn *net.TCPConn
	ns   *ipc.NewSession
}

// counters are the session totals since start. Guarded by admission.mu.
type counters struct {
	requests, direct, empty   uint64
	rejectHost, rejectMax     uint64
	rejectOther, lostSessions uint64
	// For the status file: the most sessions open at once; sessions in
	// which an auth_require refusal, an SPF or regex refusal, an early
	// talker, a full pipeline, a rate-limit refusal, an accepted and a
	// failed authentication happened.
	peak               int
	noAuth, spf, regex uint64
	earlytalk          uint64
	pipeline           uint64
	rateRefused        uint64
	authOK, authFail   uint64
}

// opsState is what admission counts for the status file and
// `smtpgatectl stats`, on top of counters. Guarded by admission.mu.
type opsState struct {
	// closes counts ended sessions by the cause of their CLOSE line.
	closes      map[string]uint64
	clientBytes uint64 // received from clients, sessions that ended
	serverBytes uint64 // received from servers, sessions that ended
	spam        uint64 // messages found spam, refused or passed
}

func newAdmission(log *logx.Logger, cfg *atomic.Pointer[config.Config], reg *registrar) *admission {
	return &admission{log: log, cfg: cfg, reg: reg,
		sessions: make(map[uint64]*session), perHost: make(map[netip.Addr]int)}
}

// verdict is admission's answer to a new connection.
type verdict struct {
	id          uint64
	total, host int    // sessions open, and from its address (with it when admitted)
	by          string // the CLOSE cause of a refusal; "" when admitted
	code        int
	text        string
}

// admit applies the global limits to connection c from src on local, and
// hands it to the least-loaded session worker. A refusal is counted and
// left to the caller to answer; an admitted connection is the worker's.
func (a *admission) admit(cfg *config.Config, c *net.TCPConn, src, local netip.AddrPort) verdict {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nextID++
	a.count.requests++
	v := verdict{id: a.nextID, total: len(a.sessions), host: a.perHost[src.Addr()], code: 554}
	var w *proc
	var l *link
	switch {
	case a.draining:
		v.by, v.code, v.text = "shutdown", 421, cfg.MsgTempUnavail
	case a.maxConnections > 0 && v.total >= a.maxConnections:
		v.by, v.text = "maxconn", cfg.MsgMaxReached
		a.count.rejectMax++
	case cfg.MaxPerHost > 0 && uint64(v.host) >= cfg.MaxPerHost:
		v.by, v.text = "maxhost", cfg.MsgMaxPerHost
		a.count.rejectHost++
	case a.overLoad(cfg):
		v.by, v.text = "load", cfg.MsgSystemLoad
	default:
		// A worker that does not keep up (its queue full, too many
		// sessions not taken, its heartbeat late) is passed over.
		if w, l = a.pickWorker(nil); w == nil {
			v.by, v.code, v.text = "unavailable", 421, cfg.MsgTempUnavail
			a.count.rejectOther++
			if a.full() {
				a.warnFull()
			}
		}
	}
	if w == nil {
		a.countClose(v.by)
		return v
	}
	v.total++
	v.host++
	s := &session{src: src, local: local, start: time.Now(), done: make(chan struct{}), conn: c,
		ns: &ipc.NewSession{ID: v.id, Client: src, Local: local, Accepted: time.Now().UnixNano(),
			Count: v.total, HostCount: v.host}}
	s.slot = a.takeSlot()
	a.sessions[v.id] = s
	a.count.peak = max(a.count.peak, len(a.sessions))
	a.perHost[src.Addr()]++
	// Logged before the sender can hand the session over, so that NEW
	// comes before the worker's lines.
	a.logNew(cfg, v.total, v.host, local, src, v.id)
	// pickWorker found room in the queue, under this lock.
	a.enqueue(w, l, v.id, s)
	return v
}

// logNew writes the NEW line of a connection, in 1.4's layout: the
// connections open and those from its source, the local and client
// addresses, the ident (not known yet), the MTA's address when master
// knows it (fixed modes; getsockname and tproxy, where it is the local
// address; empty otherwise), and the session's id.
func (a *admission) logNew(cfg *config.Config, total, host int, local, src netip.AddrPort, id uint64) {
	dst := ""
	switch {
	case cfg.Mode.Fixed():
		dst = netip.AddrPortFrom(cfg.FixedServer, cfg.FixedServerPort).String()
	case cfg.Mode == config.ModeGetsockname || cfg.Mode == config.ModeTproxy:
		dst = local.String()
	}
	a.log.Alwaysf("NEW (%d/%d) on=%v, src=%v, ident=, dst=%s, id=%d", total, host, local, src, dst, id)
}

// logClose writes the CLOSE line of a session master ended itself (see
// logNew): 1.4's fields, then the client's port and the session's id.
func (a *admission) logClose(by string, src netip.AddrPort, secs int64, id uint64) {
	cl := logx.Close{By: by, Secs: secs, Src: src, ID: id}
	a.log.Alwaysf("%s", cl.Line())
}

// admits returns the queue of session worker p when p may get a new
// session now, nil when it may not. A worker keeping up (strict) answers
// the heartbeat and has taken all but maxUntaken of the sessions handed
// to it; otherwise a worker only needs room in its queue. The supervisor
// publishes a worker's link only while the worker is ready. Called with
// a.mu held.
func (a *admission) admits(p *proc, now time.Time, strict bool) *link {
	l := p.link.Load()
	if l == nil || len(l.queue) >= cap(l.queue) || strict && (p.untaken >= maxUntaken || p.late(now)) {
		return nil
	}
	return l
}

// pickWorker chooses the worker for a new session, and returns it with
// its queue: the one with the fewest sessions among those that keep up,
// other than not. When none keeps up (a burst of clients faster than the
// workers take them, or a machine so loaded that none answered the
// heartbeat in time, master included), one with room in its queue is
// chosen all the same: the session waits there, as it would in the
// listening queue, and is handed to another if that worker is killed. A
// worker that holds as many sessions as its descriptors allow gets none
// more (nofile.go). Nil when none has room. Called with a.mu held.
func (a *admission) pickWorker(not *proc) (*proc, *link) {
	now := time.Now()
	for _, strict := range []bool{true, false} {
		var w *proc
		var wl *link
		for _, p := range a.workers {
			if p == not || !a.room(p) || (w != nil && p.sessions >= w.sessions) {
				continue
			}
			if l := a.admits(p, now, strict); l != nil {
				w, wl = p, l
			}
		}
		if w != nil {
			return w, wl
		}
	}
	return nil, nil
}

// enqueue books session s (id) as worker w's, tells lockd so, and puts it
// in w's queue l. The caller found room in it with pickWorker, under the
// same hold of a.mu, and only enqueue adds to a queue: the send does not
// wait. Called with a.mu held.
func (a *admission) enqueue(w *proc, l *link, id uint64, s *session) {
	s.worker = w
	a.register(id, s)
	w.sessions++
	w.untaken++
	l.queue <- id
}

// handing is what the sender of worker p writes for session id: the
// client socket and the hand-off message, while the session is p's and
// not taken; ok is false otherwise.
func (a *admission) handing(p *proc, id uint64) (c *net.TCPConn, ns *ipc.NewSession, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sessions[id]
	if s == nil || s.worker != p || s.conn == nil {
		return nil, nil, false
	}
	return s.conn, s.ns, true
}

// taken books a worker's MsgSessionTaken: master closes its copy of the
// client socket. It returns false when the session is not one handed to
// that worker and not yet taken: a protocol violation.
func (a *admission) taken(p *proc, id uint64) bool {
	a.mu.Lock()
	s, ok := a.sessions[id]
	if !ok || s.worker != p || s.conn == nil {
		a.mu.Unlock()
		return false
	}
	c := s.conn
	s.conn, s.ns = nil, nil
	p.untaken--
	a.mu.Unlock()
	c.Close()
	return true
}

// workerGone closes the books of session worker p, whose process exited
// and whose link the supervisor withdrew (so no session is booked to it
// any more): the sessions it never took go to other workers, unless the
// daemon is stopping, or are refused; those it had are lost.
func (a *admission) workerGone(p *proc, stopping bool) (moved, refused, lost int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	moved, refused = a.rehand(p, stopping)
	lost = a.dropSessionsOf(p)
	// The slot's next process starts with none.
	p.sessions, p.untaken = 0, 0
	return moved, refused, lost
}

// rehand gives the sessions that worker p (which exited) never took to
// other workers, or answers them 421 when none admits one. Called with
// a.mu held.
func (a *admission) rehand(p *proc, stopping bool) (moved, refused int) {
	cfg := a.cfg.Load()
	for id, s := range a.sessions {
		if s.worker != p || s.conn == nil {
			continue
		}
		if !stopping {
			if w, l := a.pickWorker(p); w != nil {
				p.sessions--
				p.untaken--
				a.enqueue(w, l, id, s)
				moved++
				a.log.Infof("[%d] %v never took it: handed to %v", id, p, w)
				continue
			}
		}
		c := s.conn
		s.conn, s.ns = nil, nil
		p.untaken--
		a.forget(id)
		a.countClose("handoff")
		refused++
		a.logClose("handoff", s.src, int64(time.Since(s.start)/time.Second), id)
		go reject(c, cfg, 421, cfg.MsgTempUnavail)
	}
	return moved, refused
}

// dropSessionsOf forgets the sessions of a worker that died, logging the
// CLOSE line the worker could not write. Called with a.mu held.
func (a *admission) dropSessionsOf(p *proc) int {
	n := 0
	for id, s := range a.sessions {
		if s.worker != p {
			continue
		}
		a.forget(id)
		n++
		a.count.lostSessions++
		a.countClose("crash")
		a.logClose("crash", s.src, int64(time.Since(s.start)/time.Second), id)
	}
	return n
}

// forget removes session id from the books. Called with a.mu held.
func (a *admission) forget(id uint64) *session {
	s, ok := a.sessions[id]
	if !ok {
		return nil
	}
	delete(a.sessions, id)
	a.freeSlots = append(a.freeSlots, s.slot)
	a.reg.tell(ipc.MsgSessionClosed, &ipc.SessionClosed{ID: id})
	a.forgetIdent(id)
	close(s.done)
	if s.conn != nil {
		s.conn.Close()
		s.conn, s.ns = nil, nil
		s.worker.untaken--
	}
	if a.perHost[s.src.Addr()]--; a.perHost[s.src.Addr()] <= 0 {
		delete(a.perHost, s.src.Addr())
	}
	s.worker.sessions--
	if a.draining && len(a.sessions) == 0 {
		close(a.drained)
	}
	return s
}

// endSession books the end of a session a worker reports. It returns false
// when the session is not that worker's: a protocol violation.
func (a *admission) endSession(p *proc, e *ipc.SessionEnd) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[e.ID]
	if !ok || s.worker != p || s.conn != nil {
		return false
	}
	a.forget(e.ID)
	a.countEnd(e)
	if e.Direct {
		a.count.direct++
	}
	if e.Empty {
		a.count.empty++
	}
	return true
}

// drain refuses every new connection from now on, and returns the number
// of sessions open and a channel closed when none is left.
func (a *admission) drain() (int, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.draining {
		a.draining = true
		a.drained = make(chan struct{})
		if len(a.sessions) == 0 {
			close(a.drained)
		}
	}
	return len(a.sessions), a.drained
}

// open is the number of sessions open.
func (a *admission) open() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.sessions)
}

// takeSlot gives a new session a slot number below max_connections,
// from the highest down as 1.4 numbered them; a slot is used again once
// its session ended. Called with a.mu held.
func (a *admission) takeSlot() int {
	if n := len(a.freeSlots); n > 0 {
		s := a.freeSlots[n-1]
		a.freeSlots = a.freeSlots[:n-1]
		return s
	}
	a.slotsUsed++
	return a.maxConnections - a.slotsUsed
}

// countClose books one CLOSE line with cause by. Called with a.mu held.
func (a *admission) countClose(by string) {
	if a.ops.closes == nil {
		a.ops.closes = make(map[string]uint64)
	}
	a.ops.closes[by]++
}

// countEnd books a session a worker reports ended. Called with a.mu held.
// What happened in it counts once per session, whatever the worker says.
func (a *admission) countEnd(e *ipc.SessionEnd) {
	a.countClose(string(e.By))
	a.ops.clientBytes += e.ClientRx
	a.ops.serverBytes += e.ServerRx
	// A message is found spam once: no more than the session's
	// transactions, whatever the worker says.
	a.ops.spam += uint64(min(max(e.Spam, 0), max(e.Transacts, 0)))
	c := &a.count
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
