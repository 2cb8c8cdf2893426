package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// helloTimeout bounds a child's start: exec, configuration, privilege drop.
const helloTimeout = 15 * time.Second

// supervisor runs master's children: it starts each slot's process and
// waits for it to be ready, links the session workers to the services,
// restarts a process that dies with back-off, pushes configurations,
// kills a child that breaks the rules, and stops them all at the end.
// The hand-off of sessions to a worker (its sender and heartbeat,
// handoff.go) runs on the process's link.
//
// Lock order: supervisor.mu and admission.mu are never held together.
// The supervisor calls admission (handing, workerGone) with its own lock
// released; admission calls nothing of the supervisor. The slots
// (workers, lookup, scanner, lockd) are made before any process starts
// and never change: they are read without the lock.
type supervisor struct {
	log *logx.Logger
	// Fixed at start: how a child is started and what its hello says.
	exe        string
	foreground bool
	started    time.Time
	emptyDir   string
	// natDev is /dev/pf or /dev/ipnat for the lookup process (modes
	// pf, ipfilter), opened before any child starts.
	natDev  *os.File
	cfgText *atomic.Value // string: the running configuration, for children
	quit    <-chan struct{}
	// dispatch is master's handling of a message from a child.
	dispatch func(p *proc, pe *ipc.Peer, msg *ipc.Msg)
	adm      *admission

	workers                []*proc
	lookup, scanner, lockd *proc

	mu sync.Mutex // guards the fields of proc marked so, and:
	// Children that died unexpectedly and those killed for breaking the
	// rules, with the time of the last.
	crashes, bugs      uint64
	crashLast, bugLast time.Time
}

// proc is one child process slot. The process in it is replaced when it
// dies; the slot stays.
type proc struct {
	role  string
	index int

	// Guarded by supervisor.mu.
	peer     *ipc.Peer
	cmd      *exec.Cmd
	pid      int
	ready    bool
	started  time.Time
	failures int
	restarts int
	// breached: the process was killed for breaking the rules (trust.go);
	// it is restarted without the back-off of a child that fails to run.
	breached bool

	// Session workers: the running process's hand-off state, published
	// by the supervisor (under its lock) while the process is ready, so
	// that admission reads it without that lock; and when the process
	// last answered the heartbeat (unix nanoseconds; its start counts as
	// an answer).
	link     atomic.Pointer[link]
	lastPong atomic.Int64

	// Guarded by admission.mu: the sessions booked to the slot's
	// process, and those of them it has not taken yet.
	sessions int
	untaken  int
}

func (p *proc) String() string {
	if p.role == ipc.RoleSession {
		return fmt.Sprintf("%s %d", p.role, p.index)
	}
	return p.role
}

// childEnv is the environment of a child: the master's, without what is
// meant for master alone.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "NOTIFY_SOCKET="), strings.HasPrefix(kv, "LISTEN_"),
			strings.HasPrefix(kv, "WATCHDOG_"), strings.HasPrefix(kv, readyEnv+"="):
			continue
		}
		env = append(env, kv)
	}
	if os.Getenv("NOTIFY_SOCKET") != "" {
		env = append(env, logx.EnvSystemd+"=1")
	}
	return env
}

// makeSlots makes the child slots: n session workers, lookup, scanner
// and lockd. They are fixed from here on.
func (s *supervisor) makeSlots(n int) {
	for i := range n {
		s.workers = append(s.workers, &proc{role: ipc.RoleSession, index: i})
	}
	s.lookup = &proc{role: ipc.RoleLookup}
	s.scanner = &proc{role: ipc.RoleScanner}
	s.lockd = &proc{role: ipc.RoleLockd}
}

// startAll starts every child slot and waits for all to be ready.
func (s *supervisor) startAll() error {
	all := s.allProcs()
	errs := make(chan error, len(all))
	for _, p := range all {
		go func() { errs <- s.spawn(p) }()
	}
	var first error
	for range all {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// allProcs lists every child slot.
func (s *supervisor) allProcs() []*proc {
	return append(append([]*proc{}, s.workers...), s.services()...)
}

// services lists the slots of lookup, scanner and lockd that exist.
func (s *supervisor) services() []*proc {
	var all []*proc
	for _, p := range []*proc{s.lookup, s.scanner, s.lockd} {
		if p != nil {
			all = append(all, p)
		}
	}
	return all
}

// stopping reports whether the daemon no longer restarts children.
func (s *supervisor) stopping() bool { return isClosed(s.quit) }

// isClosed reports whether ch is closed; a nil ch is not.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// pushAll sends configuration text to every child that is ready, and
// returns the last that failed with its error; each failure is logged
// after what.
func (s *supervisor) pushAll(text, what string) (*proc, error) {
	s.mu.Lock()
	var peers []*proc
	for _, p := range s.allProcs() {
		if p.ready {
			peers = append(peers, p)
		}
	}
	s.mu.Unlock()
	var failed *proc
	var ferr error
	for _, p := range peers {
		if err := s.push(p, text); err != nil {
			s.log.Errf("%s: %v: %v", what, p, err)
			failed, ferr = p, err
		}
	}
	return failed, ferr
}

// push sends a configuration to one child and waits for its Ack.
func (s *supervisor) push(p *proc, text string) error {
	peer := s.peerOf(p)
	if peer == nil {
		return errors.New("not running")
	}
	ctx, cancel := contextTimeout(5 * time.Second)
	defer cancel()
	r, err := peer.Call(ctx, ipc.MsgConfig, &ipc.Config{Config: text}, ipc.MsgAck)
	if err != nil {
		return err
	}
	if a := r.Payload.(*ipc.Ack); a.Err != "" {
		return errors.New(a.Err)
	}
	return nil
}

// peerOf is the link to the process of slot p, nil when none runs.
func (s *supervisor) peerOf(p *proc) *ipc.Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return p.peer
}

// lockdPeer is master's own link to lockd, nil while lockd is not ready.
func (s *supervisor) lockdPeer() *ipc.Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lockd != nil && s.lockd.ready {
		return s.lockd.peer
	}
	return nil
}

// workerPeer is a session worker's link, with the pid of its process.
type workerPeer struct {
	p    *proc
	peer *ipc.Peer
	pid  int
}

// answering lists the session workers that are ready and answer the
// heartbeat, and gives the pid of every worker slot's process.
func (s *supervisor) answering(now time.Time) ([]workerPeer, map[*proc]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ws []workerPeer
	pids := make(map[*proc]int, len(s.workers))
	for _, p := range s.workers {
		pids[p] = p.pid
		if p.ready && p.peer != nil && !p.late(now) {
			ws = append(ws, workerPeer{p, p.peer, p.pid})
		}
	}
	return ws, pids
}

// breach kills session worker p, which broke rule, if pe is still its
// link; the slot restarts as after any death.
func (s *supervisor) breach(p *proc, pe *ipc.Peer, rule string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.cmd == nil || (pe != nil && p.peer != pe) {
		return // that process is gone already
	}
	s.log.Errf("%v (pid %d) broke the rules: %s: killing it", p, p.pid, logx.Escape(rule))
	p.breached = true
	p.cmd.Process.Kill()
}

// kill kills the process of slot p if pe is still its link.
func (s *supervisor) kill(p *proc, pe *ipc.Peer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.peer == pe && p.cmd != nil {
		p.cmd.Process.Kill()
	}
}

// spawn starts the process of slot p and waits (bounded) for it to be
// ready. It returns an error when the child could not be started or did
// not say ready; the caller decides whether to retry.
func (s *supervisor) spawn(p *proc) error {
	mine, theirs, err := ipc.Pair()
	if err != nil {
		return err
	}
	cmd := exec.Command(s.exe, "-child", p.role)
	cmd.Args[0] = "smtp-gated"          // what ps shows
	cmd.ExtraFiles = []*os.File{theirs} // descriptor 3
	cmd.ExtraFiles = append(cmd.ExtraFiles, s.extraFiles(p)...)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	cmd.Env = childEnv()
	cmd.SysProcAttr = childAttr()
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		mine.Close()
		return fmt.Errorf("start %v: %w", p, err)
	}
	conn, err := ipc.NewConn(mine)
	mine.Close()
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("link to %v: %w", p, err)
	}
	peer := ipc.NewPeer(conn, p.String(), func(pe *ipc.Peer, msg *ipc.Msg) { s.dispatch(p, pe, msg) })

	s.mu.Lock()
	p.peer, p.cmd, p.pid, p.ready, p.started = peer, cmd, cmd.Process.Pid, false, time.Now()
	p.breached = false
	s.mu.Unlock()

	exited := make(chan struct{})
	linkDone := make(chan struct{})
	go func() {
		defer close(linkDone)
		err := peer.Run()
		if err != nil && !errors.Is(err, io.EOF) && !s.stopping() {
			// Unexpected is fatal: a child that breaks the protocol
			// is not trusted to go on.
			if p.role == ipc.RoleSession && errors.Is(err, ipc.ErrMalformed) {
				s.breach(p, peer, err.Error())
			} else {
				s.log.Errf("%v (pid %d): %v; killing it", p, cmd.Process.Pid, err)
			}
			cmd.Process.Kill()
		}
		peer.Close()
	}()
	go func() {
		state, _ := cmd.Process.Wait()
		close(exited)
		// What the process said before it died (the sessions it took,
		// those that ended) is read before its books are closed.
		select {
		case <-linkDone:
		case <-time.After(2 * time.Second):
		}
		s.exited(p, cmd, state)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), helloTimeout)
	defer cancel()
	hello := &ipc.Hello{
		Version:    ipc.Version,
		Role:       p.role,
		Index:      p.index,
		Config:     s.cfgText.Load().(string),
		Foreground: s.foreground,
		Started:    s.started.Unix(),
		EmptyDir:   s.emptyDir,
	}
	// A child that fails its start is no longer the slot's: its exit
	// must not trigger a restart of its own, the caller retries.
	abandon := func() {
		s.mu.Lock()
		if p.cmd == cmd {
			p.cmd, p.peer = nil, nil
		}
		s.mu.Unlock()
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
		}
	}
	reply, err := peer.Call(ctx, ipc.MsgHello, hello, ipc.MsgReady)
	if err != nil {
		abandon()
		return fmt.Errorf("%v did not start: %w", p, err)
	}
	r := reply.Payload.(*ipc.Ready)
	if r.Version != ipc.Version || r.Pid != cmd.Process.Pid {
		abandon()
		return fmt.Errorf("%v answered hello with version %d pid %d (want %d, %d)", p, r.Version, r.Pid, ipc.Version, cmd.Process.Pid)
	}
	s.mu.Lock()
	// A process that exited meanwhile is not made ready: its exit
	// restarts the slot.
	if p.cmd == cmd && !isClosed(exited) {
		p.ready = true
		if p.role == ipc.RoleSession {
			// Admission sees the worker from here, answering.
			l := &link{queue: make(chan uint64, handQueue), stop: make(chan struct{})}
			p.lastPong.Store(time.Now().UnixNano())
			p.link.Store(l)
			go s.sendSessions(p, peer, cmd, l)
			go s.heartbeat(p, peer, cmd, l)
		}
	}
	s.mu.Unlock()
	s.log.Debugf("%v ready (pid %d)", p, cmd.Process.Pid)
	s.linkPeers(p)
	return nil
}

// linkPeers gives a child that just became ready its links to the
// children it talks to directly: session workers to lookup, scanner and lockd.
func (s *supervisor) linkPeers(p *proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch p.role {
	case ipc.RoleSession:
		for _, svc := range []*proc{s.lookup, s.scanner, s.lockd} {
			if svc.ready {
				s.link(p, svc)
			}
		}
	case ipc.RoleLookup, ipc.RoleScanner, ipc.RoleLockd:
		for _, w := range s.workers {
			if w.ready {
				s.link(w, p)
			}
		}
	}
}

// link makes a socketpair between session worker w and service l and
// sends each its end. Called with s.mu held.
func (s *supervisor) link(w, l *proc) {
	a, b, err := ipc.Pair()
	if err != nil {
		s.log.Errf("link %v to %v: %v", w, l, err)
		return
	}
	defer a.Close()
	defer b.Close()
	if err := l.peer.Send(ipc.MsgPeerLink, &ipc.PeerLink{Role: w.role, Index: w.index}, int(a.Fd())); err != nil {
		s.log.Errf("link %v to %v: %v", w, l, err)
		return
	}
	if err := w.peer.Send(ipc.MsgPeerLink, &ipc.PeerLink{Role: l.role, Index: l.index}, int(b.Fd())); err != nil {
		s.log.Errf("link %v to %v: %v", w, l, err)
	}
}

// exited handles the end of a child process: its sessions are closed in
// the books, and unless the daemon is stopping the slot is restarted with
// back-off (a child that keeps dying at start-up is throttled).
func (s *supervisor) exited(p *proc, cmd *exec.Cmd, state *os.ProcessState) {
	stopping := s.stopping()
	s.mu.Lock()
	if p.cmd != cmd {
		s.mu.Unlock()
		return
	}
	p.ready = false
	p.peer.Close()
	lived := time.Since(p.started)
	// Admission books no new session to p from here.
	l := p.link.Swap(nil)
	if l != nil {
		close(l.stop)
	}
	switch {
	case stopping:
	case p.breached:
		s.bugs++
		s.bugLast = time.Now()
	default:
		s.crashes++
		s.crashLast = time.Now()
	}
	if lived >= 10*time.Second || p.breached {
		p.failures = 0
	} else {
		p.failures++
	}
	delay := p.backoff()
	s.mu.Unlock()

	var moved, refused, lost int
	if p.role == ipc.RoleSession {
		moved, refused, lost = s.adm.workerGone(p, stopping)
	}
	if stopping {
		s.log.Debugf("%v (pid %d) exited: %v", p, cmd.Process.Pid, state)
		return
	}
	s.log.Errf("%v (pid %d) exited: %v, after %v; %d sessions lost; restarting in %v",
		p, cmd.Process.Pid, describe(state), lived.Round(time.Millisecond), lost, delay)
	if moved+refused > 0 {
		s.log.Warningf("%v had not taken %d sessions: %d handed to other workers, %d refused", p, moved+refused, moved, refused)
	}
	go s.restart(p, delay)
}

// backoff is how long slot p waits before it is started again: 250 ms
// after a process that ran for a while (or was killed for a breach),
// doubling with each failure in a row up to 30 s. Called with
// supervisor.mu held.
func (p *proc) backoff() time.Duration {
	return min(250*time.Millisecond<<min(p.failures, 7), 30*time.Second)
}

// restart starts slot p again after delay, and again with growing delays
// while it fails to start.
func (s *supervisor) restart(p *proc, delay time.Duration) {
	for {
		select {
		case <-time.After(delay):
		case <-s.quit:
			return
		}
		s.mu.Lock()
		p.restarts++
		s.mu.Unlock()
		err := s.spawn(p)
		if err == nil {
			s.log.Noticef("%v restarted (pid %d)", p, p.pid)
			return
		}
		s.mu.Lock()
		p.failures++
		delay = p.backoff()
		s.mu.Unlock()
		s.log.Errf("restarting %v: %v; trying again in %v", p, err, delay)
	}
}

func describe(state *os.ProcessState) string {
	if state == nil {
		return "unknown status"
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by signal " + ws.Signal().String()
	}
	return state.String()
}

// stopChildren closes every child's link (they exit on end of file) and
// waits for them, killing what is left after the bound. The session
// workers go first: they use the services to the end, and a service that
// went before them would leave them a broken link to report.
func (s *supervisor) stopChildren(bound time.Duration) {
	deadline := time.Now().Add(bound)
	s.stopProcs(s.workers, deadline, bound)
	s.stopProcs(s.services(), deadline, bound)
}

// stopProcs closes the links of procs and waits for them until deadline.
func (s *supervisor) stopProcs(procs []*proc, deadline time.Time, bound time.Duration) {
	s.mu.Lock()
	var cmds []*exec.Cmd
	for _, p := range procs {
		if p.peer != nil {
			p.peer.Close()
		}
		if p.cmd != nil {
			cmds = append(cmds, p.cmd)
		}
	}
	s.mu.Unlock()
	for _, c := range cmds {
		for c.ProcessState == nil && processAlive(c.Process.Pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if processAlive(c.Process.Pid) {
			s.log.Warningf("pid %d did not exit in %v: killing it", c.Process.Pid, bound)
			c.Process.Kill()
		}
	}
}
