package master

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// fakeWorker is a session worker slot linked to master by a real
// socketpair, run by the test: a healthy one takes every session (it
// answers SESSION_TAKEN and writes "220 ID" on the client socket), a
// stalled one never reads its link.
type fakeWorker struct {
	p     *proc
	l     *link
	end   *ipc.Conn     // the worker's end
	taken chan uint64   // sessions the healthy one took
	cmd   *exec.Cmd     // a stand-in process, for the sender's log lines
	done  chan struct{} // the stalled one's link was closed
}

func startFake(t *testing.T, m *master, index int, healthy bool) *fakeWorker {
	t.Helper()
	a, b, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	mineConn, err := ipc.NewConn(a)
	if err != nil {
		t.Fatal(err)
	}
	end, err := ipc.NewConn(b)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	f := &fakeWorker{p: &proc{role: ipc.RoleSession, index: index}, end: end, cmd: cmd,
		taken: make(chan uint64, 4096), done: make(chan struct{})}
	mine := ipc.NewPeer(mineConn, f.p.String(), func(pe *ipc.Peer, msg *ipc.Msg) { m.fromChild(f.p, pe, msg) })
	go mine.Run()
	t.Cleanup(func() { mine.Close(); end.Close() })
	if healthy {
		worker := ipc.NewPeer(end, "master", func(pe *ipc.Peer, msg *ipc.Msg) {
			ns, ok := msg.Payload.(*ipc.NewSession)
			if !ok {
				msg.Close()
				return
			}
			c := msg.TakeFile(0)
			if err := pe.Send(ipc.MsgSessionTaken, &ipc.SessionTaken{ID: ns.ID}); err != nil {
				t.Errorf("SESSION_TAKEN: %v", err)
			}
			fmt.Fprintf(c, "220 %d\r\n", ns.ID)
			c.Close()
			f.taken <- ns.ID
		})
		go worker.Run()
	}
	f.l = &link{queue: make(chan uint64, handQueue), stop: make(chan struct{})}
	// As the supervisor makes a worker ready. No heartbeat runs here:
	// both count as answering for the whole test, however slow the
	// machine.
	m.sup.mu.Lock()
	f.p.peer, f.p.cmd, f.p.pid, f.p.ready = mine, cmd, cmd.Process.Pid, true
	f.p.lastPong.Store(time.Now().Add(time.Hour).UnixNano())
	f.p.link.Store(f.l)
	m.sup.mu.Unlock()
	m.sup.workers = append(m.sup.workers, f.p)
	m.adm.workers = m.sup.workers
	go m.sup.sendSessions(f.p, mine, cmd, f.l)
	return f
}

// With one of two workers not reading its link, admit never waits: the
// stalled worker is passed over once it has maxUntaken sessions not
// taken, every other session goes to the healthy one, nobody is refused;
// when the stalled worker dies, the sessions it never took go to the
// healthy one, on the very client connections.
func TestHandOffStalledWorker(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nmax_per_host 10000\nmax_load 0\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	m := newMaster(Options{}, logx.Discard())
	m.cfg.Store(cfg)
	defer m.stop()
	stalled := startFake(t, m, 0, false)
	healthy := startFake(t, m, 1, true)

	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 600
	clients := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	var slowest time.Duration
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		sc, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		m.admit(sc)
		slowest = max(slowest, time.Since(start))
	}
	if slowest > 500*time.Millisecond {
		t.Errorf("an admit took %v", slowest)
	}

	m.adm.mu.Lock()
	untaken, atStalled, rejected := stalled.p.untaken, stalled.p.sessions, m.adm.count.rejectOther
	m.adm.mu.Unlock()
	if rejected != 0 {
		t.Errorf("%d connections refused, want none", rejected)
	}
	if untaken != maxUntaken || atStalled != maxUntaken {
		t.Errorf("stalled worker: %d sessions, %d untaken; want %d, all untaken", atStalled, untaken, maxUntaken)
	}
	got := map[uint64]bool{}
	for len(got) < n-maxUntaken {
		select {
		case id := <-healthy.taken:
			got[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("healthy worker took %d sessions, want %d", len(got), n-maxUntaken)
		}
	}

	// Master books the SESSION_TAKEN messages on its own time: until it
	// has, the healthy worker counts them as untaken (no message tells
	// the test, so the books are polled).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		m.adm.mu.Lock()
		left := healthy.p.untaken
		m.adm.mu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthy worker: %d sessions still untaken in master's books", left)
		}
	}

	// The stalled worker dies: the supervisor withdraws its link, and
	// what it never took goes to the healthy one.
	stalled.p.link.Store(nil)
	close(stalled.l.stop)
	stalled.end.Close()
	moved, refused, lost := m.adm.workerGone(stalled.p, false)
	if moved != maxUntaken || refused != 0 || lost != 0 {
		t.Errorf("worker gone: %d moved, %d refused, %d lost; want %d, 0, 0", moved, refused, lost, maxUntaken)
	}
	for len(got) < n {
		select {
		case id := <-healthy.taken:
			got[id] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("healthy worker took %d sessions after the rehand, want %d", len(got), n)
		}
	}
	// Each client got the greeting of its own session, from the healthy
	// worker, on the connection it opened.
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := fmt.Sprintf("220 %d\r\n", i+1); err != nil || line != want {
			t.Fatalf("client %d: %q, %v; want %q", i, line, err, want)
		}
	}
	m.adm.mu.Lock()
	defer m.adm.mu.Unlock()
	if stalled.p.untaken != 0 || healthy.p.untaken != 0 || healthy.p.sessions != n {
		t.Errorf("books: stalled untaken %d, healthy untaken %d sessions %d; want 0, 0, %d",
			stalled.p.untaken, healthy.p.untaken, healthy.p.sessions, n)
	}
	for id, s := range m.adm.sessions {
		if s.conn != nil {
			t.Errorf("session %d: master still holds the client socket", id)
		}
	}
}
