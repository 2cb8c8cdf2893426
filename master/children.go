package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// helloTimeout bounds a child's start: exec, configuration, privilege drop.
const helloTimeout = 15 * time.Second

// proc is one child process slot. The process in it is replaced when it
// dies; the slot stays.
type proc struct {
	role  string
	index int

	// Guarded by master.mu.
	peer     *ipc.Peer
	cmd      *exec.Cmd
	pid      int
	ready    bool
	sessions int
	started  time.Time
	failures int
	restarts int
	// Session workers: the running process's hand-off state, and the
	// number of sessions handed to it that it has not taken yet.
	link    *link
	untaken int

	// lastPong is when the session worker last answered the heartbeat
	// (unix nanoseconds; its start counts as an answer).
	lastPong atomic.Int64

	// breached: the process was killed for breaking the rules (trust.go);
	// it is restarted without the back-off of a child that fails to run.
	breached bool
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

// spawn starts the process of slot p and waits (bounded) for it to be
// ready. It returns an error when the child could not be started or did
// not say ready; the caller decides whether to retry.
func (m *master) spawn(p *proc) error {
	mine, theirs, err := ipc.Pair()
	if err != nil {
		return err
	}
	cmd := exec.Command(m.opts.Exe, "-child", p.role)
	cmd.Args[0] = "smtp-gated"          // what ps shows
	cmd.ExtraFiles = []*os.File{theirs} // descriptor 3
	cmd.ExtraFiles = append(cmd.ExtraFiles, m.extraFiles(p)...)
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
	peer := ipc.NewPeer(conn, p.String(), func(pe *ipc.Peer, msg *ipc.Msg) { m.fromChild(p, pe, msg) })

	var l *link
	if p.role == ipc.RoleSession {
		l = &link{queue: make(chan uint64, handQueue), stop: make(chan struct{})}
	}
	m.mu.Lock()
	p.peer, p.cmd, p.pid, p.ready, p.sessions, p.started = peer, cmd, cmd.Process.Pid, false, 0, time.Now()
	p.link, p.untaken = l, 0
	p.breached = false
	m.mu.Unlock()

	exited := make(chan struct{})
	linkDone := make(chan struct{})
	go func() {
		defer close(linkDone)
		err := peer.Run()
		if err != nil && !errors.Is(err, io.EOF) && !m.stopping() {
			// Unexpected is fatal: a child that breaks the protocol
			// is not trusted to go on.
			if p.role == ipc.RoleSession && errors.Is(err, ipc.ErrMalformed) {
				m.breach(p, peer, err.Error())
			} else {
				m.log.Errf("%v (pid %d): %v; killing it", p, cmd.Process.Pid, err)
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
		m.exited(p, cmd, state)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), helloTimeout)
	defer cancel()
	hello := &ipc.Hello{
		Version:    ipc.Version,
		Role:       p.role,
		Index:      p.index,
		Config:     m.cfgText.Load().(string),
		Foreground: m.opts.Foreground,
		Started:    m.started.Unix(),
		EmptyDir:   m.emptyDir,
	}
	// A child that fails its start is no longer the slot's: its exit
	// must not trigger a restart of its own, the caller retries.
	abandon := func() {
		m.mu.Lock()
		if p.cmd == cmd {
			p.cmd, p.peer = nil, nil
		}
		m.mu.Unlock()
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
	m.mu.Lock()
	if p.cmd == cmd {
		p.ready = true
		if l != nil {
			p.lastPong.Store(time.Now().UnixNano())
			go m.sendSessions(p, peer, cmd, l)
			go m.heartbeat(p, peer, cmd, l)
		}
	}
	m.mu.Unlock()
	m.log.Debugf("%v ready (pid %d)", p, cmd.Process.Pid)
	m.linkPeers(p)
	return nil
}

// linkPeers gives a child that just became ready its links to the
// children it talks to directly: session workers to lookup, scanner and lockd.
func (m *master) linkPeers(p *proc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch p.role {
	case ipc.RoleSession:
		for _, svc := range []*proc{m.lookup, m.scanner, m.lockd} {
			if svc.ready {
				m.link(p, svc)
			}
		}
	case ipc.RoleLookup, ipc.RoleScanner, ipc.RoleLockd:
		for _, s := range m.sessionProcs {
			if s.ready {
				m.link(s, p)
			}
		}
	}
}

// link makes a socketpair between session worker s and service l and
// sends each its end. Called with m.mu held.
func (m *master) link(s, l *proc) {
	a, b, err := ipc.Pair()
	if err != nil {
		m.log.Errf("link %v to %v: %v", s, l, err)
		return
	}
	defer a.Close()
	defer b.Close()
	if err := l.peer.Send(ipc.MsgPeerLink, &ipc.PeerLink{Role: s.role, Index: s.index}, int(a.Fd())); err != nil {
		m.log.Errf("link %v to %v: %v", s, l, err)
		return
	}
	if err := s.peer.Send(ipc.MsgPeerLink, &ipc.PeerLink{Role: l.role, Index: l.index}, int(b.Fd())); err != nil {
		m.log.Errf("link %v to %v: %v", s, l, err)
	}
}

// exited handles the end of a child process: its sessions are closed in
// the books, and unless the daemon is stopping the slot is restarted with
// back-off (a child that keeps dying at start-up is throttled).
func (m *master) exited(p *proc, cmd *exec.Cmd, state *os.ProcessState) {
	m.mu.Lock()
	if p.cmd != cmd {
		m.mu.Unlock()
		return
	}
	p.ready = false
	p.peer.Close()
	lived := time.Since(p.started)
	var moved, refused int
	if p.link != nil {
		close(p.link.stop)
		moved, refused = m.rehand(p)
		p.link = nil
	}
	lost := m.dropSessionsOf(p)
	stopping := m.stoppingLocked()
	switch {
	case stopping:
	case p.breached:
		m.count.bugs++
		m.count.bugLast = time.Now()
	default:
		m.count.crashes++
		m.count.crashLast = time.Now()
	}
	if lived >= 10*time.Second || p.breached {
		p.failures = 0
	} else {
		p.failures++
	}
	delay := p.backoff()
	m.mu.Unlock()

	if stopping {
		m.log.Debugf("%v (pid %d) exited: %v", p, cmd.Process.Pid, state)
		return
	}
	m.log.Errf("%v (pid %d) exited: %v, after %v; %d sessions lost; restarting in %v",
		p, cmd.Process.Pid, describe(state), lived.Round(time.Millisecond), lost, delay)
	if moved+refused > 0 {
		m.log.Warningf("%v had not taken %d sessions: %d handed to other workers, %d refused", p, moved+refused, moved, refused)
	}
	go m.restart(p, delay)
}

// backoff is how long slot p waits before it is started again: 250 ms
// after a process that ran for a while (or was killed for a breach),
// doubling with each failure in a row up to 30 s. Called with m.mu held.
func (p *proc) backoff() time.Duration {
	return min(250*time.Millisecond<<min(p.failures, 7), 30*time.Second)
}

// restart starts slot p again after delay, and again with growing delays
// while it fails to start.
func (m *master) restart(p *proc, delay time.Duration) {
	for {
		select {
		case <-time.After(delay):
		case <-m.quit:
			return
		}
		if m.stopping() {
			return
		}
		m.mu.Lock()
		p.restarts++
		m.mu.Unlock()
		err := m.spawn(p)
		if err == nil {
			m.log.Noticef("%v restarted (pid %d)", p, p.pid)
			return
		}
		m.mu.Lock()
		p.failures++
		delay = p.backoff()
		m.mu.Unlock()
		m.log.Errf("restarting %v: %v; trying again in %v", p, err, delay)
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

// fromChild is master's dispatch of messages from its children.
func (m *master) fromChild(p *proc, pe *ipc.Peer, msg *ipc.Msg) {
	switch v := msg.Payload.(type) {
	case *ipc.SessionEnd:
		if p.role == ipc.RoleSession {
			if !m.endSession(p, v) {
				msg.Close()
				m.breach(p, pe, fmt.Sprintf("end of session %d, which is not its own", v.ID))
			}
			return
		}
	case *ipc.SessionAsk:
		if p.role == ipc.RoleLockd {
			m.sessionAsk(pe, msg, v)
			return
		}
	case *ipc.Breach:
		if p.role == ipc.RoleLockd {
			m.lockdBreach(v)
			return
		}
	case *ipc.SessionTaken:
		if p.role == ipc.RoleSession && m.taken(p, v.ID) {
			return
		}
	case *ipc.SpoofQuery:
		if p.role == ipc.RoleSession {
			m.spoof(p, pe, msg, v)
			return
		}
	case *ipc.IdentQuery:
		if p.role == ipc.RoleSession {
			m.identQuery(p, pe, msg, v)
			return
		}
	}
	msg.Close()
	if p.role == ipc.RoleSession {
		m.breach(p, pe, fmt.Sprintf("unexpected %v", msg.Type))
		return
	}
	m.log.Errf("unexpected %v from %v: killing it", msg.Type, p)
	m.mu.Lock()
	if p.peer == pe && p.cmd != nil {
		p.cmd.Process.Kill()
	}
	m.mu.Unlock()
}

// stopChildren closes every child's link (they exit on end of file) and
// waits for them, killing what is left after the bound. The session
// workers go first: they use the services to the end, and a service that
// went before them would leave them a broken link to report.
func (m *master) stopChildren(bound time.Duration) {
	deadline := time.Now().Add(bound)
	m.mu.Lock()
	workers := append([]*proc{}, m.sessionProcs...)
	var services []*proc
	for _, p := range []*proc{m.lookup, m.scanner, m.lockd} {
		if p != nil {
			services = append(services, p)
		}
	}
	m.mu.Unlock()
	m.stopProcs(workers, deadline, bound)
	m.stopProcs(services, deadline, bound)
}

// stopProcs closes the links of procs and waits for them until deadline.
func (m *master) stopProcs(procs []*proc, deadline time.Time, bound time.Duration) {
	m.mu.Lock()
	var cmds []*exec.Cmd
	for _, p := range procs {
		if p.peer != nil {
			p.peer.Close()
		}
		if p.cmd != nil {
			cmds = append(cmds, p.cmd)
		}
	}
	m.mu.Unlock()
	for _, c := range cmds {
		for c.ProcessState == nil && processAlive(c.Process.Pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if processAlive(c.Process.Pid) {
			m.log.Warningf("pid %d did not exit in %v: killing it", c.Process.Pid, bound)
			c.Process.Kill()
		}
	}
}
