package master

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// bookWorker is a session worker slot as the supervisor publishes a
// ready one, with no process behind it: admission needs only its link.
func bookWorker(index int) (*proc, *link) {
	p := &proc{role: ipc.RoleSession, index: index}
	l := &link{queue: make(chan uint64, handQueue), stop: make(chan struct{})}
	p.lastPong.Store(time.Now().Add(time.Hour).UnixNano())
	p.link.Store(l)
	return p, l
}

// tcpPair returns the server end of a loopback connection, which admit
// books, and closes both ends at the end of the test.
func tcpPair(t *testing.T, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); sc.Close() })
	return sc
}

// Admission counts alone, with no process: max_connections and
// max_per_host exactly, the least-loaded worker, the status-file slots
// from the top down and used again, and a worker's death that hands what
// it never took to another and loses what it had.
func TestAdmissionBooks(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nmax_per_host 2\nmax_load 0\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	var cp atomic.Pointer[config.Config]
	cp.Store(cfg)
	a := newAdmission(logx.Discard(), &cp, &registrar{})
	a.maxConnections = 3
	w0, q0 := bookWorker(0)
	w1, q1 := bookWorker(1)
	a.workers = []*proc{w0, w1}

	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	local := netip.MustParseAddrPort("127.0.0.1:25")
	hostA := netip.MustParseAddrPort("192.0.2.1:1000")
	hostB := netip.MustParseAddrPort("192.0.2.2:1000")
	admit := func(src netip.AddrPort) verdict {
		t.Helper()
		return a.admit(cfg, tcpPair(t, ln), src, local)
	}

	for i, want := range []struct {
		src         netip.AddrPort
		by          string
		total, host int
	}{
		{hostA, "", 1, 1},
		{hostA, "", 2, 2},
		{hostA, "maxhost", 2, 2},
		{hostB, "", 3, 1},
		{hostB, "maxconn", 3, 1},
	} {
		v := admit(want.src)
		if v.id != uint64(i+1) || v.by != want.by || v.total != want.total || v.host != want.host {
			t.Errorf("connection %d from %v: %+v; want id %d, by %q, %d/%d", i+1, want.src, v, i+1, want.by, want.total, want.host)
		}
	}
	// Sessions 1, 2 and 4: alternately to the worker with fewer.
	if got := []int{len(q0.queue), len(q1.queue), w0.sessions, w1.sessions}; got[0]+got[1] != 3 || got[2] != got[0] || got[3] != got[1] || abs(got[0]-got[1]) != 1 {
		t.Errorf("queues %d, %d, sessions %d, %d: want 3 sessions spread over both", got[0], got[1], got[2], got[3])
	}
	a.mu.Lock()
	slots := []int{a.sessions[1].slot, a.sessions[2].slot, a.sessions[4].slot}
	rejHost, rejMax, requests := a.count.rejectHost, a.count.rejectMax, a.count.requests
	closes := a.ops.closes["maxhost"] + a.ops.closes["maxconn"]
	a.mu.Unlock()
	if slots[0] != 2 || slots[1] != 1 || slots[2] != 0 {
		t.Errorf("slots %v, want [2 1 0]", slots)
	}
	if rejHost != 1 || rejMax != 1 || requests != 5 || closes != 2 {
		t.Errorf("rejects host %d, max %d, requests %d, refusal CLOSEs %d; want 1, 1, 5, 2", rejHost, rejMax, requests, closes)
	}

	// Session 1 is taken and ends: its slot and its host's count are
	// free again, and only its own worker may say so.
	w := a.sessions[1].worker
	other := w0
	if w == w0 {
		other = w1
	}
	if a.taken(other, 1) || a.endSession(other, &ipc.SessionEnd{ID: 1}) {
		t.Errorf("the other worker took or ended session 1")
	}
	if a.endSession(w, &ipc.SessionEnd{ID: 1}) {
		t.Errorf("session 1 ended before it was taken")
	}
	if !a.taken(w, 1) || !a.endSession(w, &ipc.SessionEnd{ID: 1, By: ipc.CloseQuit}) {
		t.Fatalf("session 1 not taken and ended by its worker %v", w)
	}
	if v := admit(hostA); v.by != "" || v.host != 2 {
		t.Errorf("after an end, from %v: %+v; want admitted, 2 from it", hostA, v)
	}
	a.mu.Lock()
	if s := a.sessions[6]; s == nil || s.slot != 2 {
		t.Errorf("session 6 not booked in slot 2, the one freed")
	}
	a.mu.Unlock()

	// Worker 0 dies (its link withdrawn first, as the supervisor does):
	// one session taken is lost, the others go to worker 1.
	a.mu.Lock()
	var took uint64
	for id, s := range a.sessions {
		if s.worker == w0 {
			took = id
			break
		}
	}
	a.mu.Unlock()
	if took == 0 || !a.taken(w0, took) {
		t.Fatalf("no session of worker 0 to take")
	}
	a.mu.Lock()
	want := w0.sessions - 1
	a.mu.Unlock()
	w0.link.Store(nil)
	moved, refused, lost := a.workerGone(w0, false)
	if moved != want || refused != 0 || lost != 1 {
		t.Errorf("worker 0 gone: %d moved, %d refused, %d lost; want %d, 0, 1", moved, refused, lost, want)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, s := range a.sessions {
		if s.worker != w1 {
			t.Errorf("session %d still booked to %v", id, s.worker)
		}
	}
	if w0.sessions != 0 || w0.untaken != 0 || w1.sessions != len(a.sessions) || len(q1.queue) != w1.untaken {
		t.Errorf("books: worker 0 %d/%d, worker 1 %d/%d (queue %d), %d open",
			w0.sessions, w0.untaken, w1.sessions, w1.untaken, len(q1.queue), len(a.sessions))
	}
	if a.count.lostSessions != 1 || a.ops.closes["crash"] != 1 {
		t.Errorf("lost %d, crash CLOSEs %d; want 1, 1", a.count.lostSessions, a.ops.closes["crash"])
	}
}

// A worker that is not ready (no link) or whose queue is full gets no
// session; one that has maxUntaken sessions not taken, or is late, gets
// one only when none keeps up, the least loaded of them.
func TestPickWorker(t *testing.T) {
	a := newAdmission(logx.Discard(), nil, &registrar{})
	ready, _ := bookWorker(0)
	starting := &proc{role: ipc.RoleSession, index: 1}
	full, fq := bookWorker(2)
	for range cap(fq.queue) {
		fq.queue <- 0
	}
	busy, _ := bookWorker(3)
	busy.untaken = maxUntaken
	busy.sessions = maxUntaken
	ready.sessions = 10 * maxUntaken // the most loaded
	a.workers = []*proc{starting, full, busy, ready}
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, l := a.pickWorker(nil); w != ready || l != ready.link.Load() {
		t.Errorf("picked %v, want %v with its link", w, ready)
	}
	if w, _ := a.pickWorker(ready); w != busy {
		t.Errorf("picked %v when none other keeps up, want %v, the one with room", w, busy)
	}
	late, _ := bookWorker(4)
	late.lastPong.Store(time.Now().Add(-time.Minute).UnixNano())
	a.workers = append(a.workers, late)
	if w, _ := a.pickWorker(nil); w != ready {
		t.Errorf("picked %v with one keeping up, want %v", w, ready)
	}
	if w, _ := a.pickWorker(ready); w != late {
		t.Errorf("picked %v when none keeps up, want %v, the least loaded", w, late)
	}
	for range cap(late.link.Load().queue) {
		late.link.Load().queue <- 0
	}
	busy.link.Store(nil)
	if w, _ := a.pickWorker(ready); w != nil {
		t.Errorf("picked %v; none other has room", w)
	}
}

// Connections admitted at once from many goroutines are counted exactly,
// while the status is read through both halves of master.
func TestAdmissionExact(t *testing.T) {
	cfg, err := config.Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nmax_per_host 60\nmax_load 0\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	m := newMaster(Options{}, logx.Discard())
	m.cfg.Store(cfg)
	w0, _ := bookWorker(0)
	w1, _ := bookWorker(1)
	m.sup.workers = []*proc{w0, w1}
	m.adm.workers = m.sup.workers

	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const goroutines, each = 4, 50
	conns := make([]*net.TCPConn, 0, goroutines*each)
	for range goroutines * each {
		conns = append(conns, tcpPair(t, ln))
	}
	src := netip.MustParseAddrPort("192.0.2.1:1000")
	local := netip.MustParseAddrPort("127.0.0.1:25")
	var wg sync.WaitGroup
	admitted := make(chan verdict, len(conns))
	for g := range goroutines {
		wg.Go(func() {
			for _, c := range conns[g*each : (g+1)*each] {
				if v := m.adm.admit(cfg, c, src, local); v.by == "" {
					admitted <- v
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			m.status()
			m.snap(false)
		}
	})
	wg.Wait()
	close(admitted)
	hosts := map[int]bool{}
	for v := range admitted {
		hosts[v.host] = true
	}
	s := m.snap(false)
	if len(hosts) != 60 || s.Current != 60 || s.Requests != goroutines*each || s.Rejects[0] != goroutines*each-60 {
		t.Errorf("%d distinct host counts, %d open, %d requests, %d refused by max_per_host; want 60, 60, %d, %d",
			len(hosts), s.Current, s.Requests, s.Rejects[0], goroutines*each, goroutines*each-60)
	}
	if st := m.status(); !strings.Contains(st, "Children: 60/0 ") || !strings.Contains(st, "sessions 30 ") {
		t.Errorf("status:\n%s\nwant 60 children, 30 sessions for each worker", st)
	}
}

func abs(n int) int { return max(n, -n) }
