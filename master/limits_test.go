package master

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

func limitsMaster(t *testing.T, extra ...string) *master {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader("mode remote\n"+strings.Join(extra, "\n")+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	m := newMaster(Options{}, logx.Discard())
	m.cfg.Store(cfg)
	return m
}

// identPeers links a session worker slot to master: the worker's end
// asks, master's end answers with fromChild.
func identPeers(t *testing.T, m *master, p *proc) *ipc.Peer {
	t.Helper()
	a, b, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := ipc.NewConn(a)
	cb, _ := ipc.NewConn(b)
	a.Close()
	b.Close()
	worker := ipc.NewPeer(ca, "session", func(*ipc.Peer, *ipc.Msg) {})
	mine := ipc.NewPeer(cb, p.String(), func(pe *ipc.Peer, msg *ipc.Msg) { m.fromChild(p, pe, msg) })
	go worker.Run()
	go mine.Run()
	t.Cleanup(func() { worker.Close(); mine.Close() })
	return worker
}

func askIdent(t *testing.T, worker *ipc.Peer, id uint64, ident string) *ipc.IdentAnswer {
	t.Helper()
	ctx, cancel := contextTimeout(5e9)
	defer cancel()
	r, err := worker.Call(ctx, ipc.MsgIdentQuery, &ipc.IdentQuery{ID: id, Ident: ident}, ipc.MsgIdentAnswer)
	if err != nil {
		t.Fatal(err)
	}
	return r.Payload.(*ipc.IdentAnswer)
}

// max_per_ident counts exactly whichever worker asks, per address and
// ident, and forgets a session that ends.
func TestMaxPerIdent(t *testing.T) {
	m := limitsMaster(t, "max_per_ident 3")
	w1, w2 := &proc{role: ipc.RoleSession, index: 0}, &proc{role: ipc.RoleSession, index: 1}
	p1, p2 := identPeers(t, m, w1), identPeers(t, m, w2)
	src := netip.MustParseAddrPort("192.0.2.7:1000")
	other := netip.MustParseAddrPort("192.0.2.8:1000")
	m.adm.mu.Lock()
	for id := uint64(1); id <= 20; id++ {
		w, s := w1, src
		if id%2 == 0 {
			w = w2
		}
		if id > 10 {
			s = other
		}
		m.adm.sessions[id] = &session{worker: w, src: s, done: make(chan struct{})}
	}
	m.adm.mu.Unlock()
	var mu sync.Mutex
	over, counted := 0, 0
	var wg sync.WaitGroup
	for id := uint64(1); id <= 10; id++ {
		wg.Go(func() {
			p := p1
			if id%2 == 0 {
				p = p2
			}
			a := askIdent(t, p, id, "alice")
			mu.Lock()
			defer mu.Unlock()
			if a.Over {
				over++
			} else {
				counted++
			}
		})
	}
	wg.Wait()
	if counted != 3 || over != 7 {
		t.Fatalf("counted %d, over %d; want 3 and 7", counted, over)
	}
	// Another ident, another address: counts of their own.
	if a := askIdent(t, p1, 11, "alice"); a.Over || a.Count != 1 {
		t.Errorf("another address: %+v", a)
	}
	// A session of the other worker (a breach: no answer, the worker
	// is killed), an unknown session, twice the same.
	ctx, cancel := contextTimeout(300 * time.Millisecond)
	if r, err := p1.Call(ctx, ipc.MsgIdentQuery, &ipc.IdentQuery{ID: 12, Ident: "bob"}, ipc.MsgIdentAnswer); err == nil {
		t.Errorf("asked for another worker's session: %+v", r.Payload)
	}
	cancel()
	m.adm.mu.Lock()
	if m.adm.lim.identOf[12] != (identKey{}) || m.adm.sessions[12].ident != "" {
		t.Errorf("another worker's session got an ident")
	}
	m.adm.mu.Unlock()
	if a := askIdent(t, p1, 99, "bob"); a.Err == "" {
		t.Errorf("unknown session: %+v", a)
	}
	// Sessions end: their idents are uncounted.
	m.adm.mu.Lock()
	for id := uint64(1); id <= 10; id++ {
		m.adm.forget(id)
	}
	m.adm.mu.Unlock()
	if a := askIdent(t, p1, 13, "alice"); a.Over || a.Count != 2 {
		t.Errorf("after the sessions ended: %+v, want count 2 (with session 11)", a)
	}
	m.adm.mu.Lock()
	if len(m.adm.lim.perIdent) != 1 || len(m.adm.lim.identOf) != 2 {
		t.Errorf("books: %v %v", m.adm.lim.perIdent, m.adm.lim.identOf)
	}
	m.adm.mu.Unlock()
}

func TestOverLoad(t *testing.T) {
	m := limitsMaster(t, "max_load 0")
	if m.adm.overLoad(m.cfg.Load()) {
		t.Error("max_load 0 refuses")
	}
	m = limitsMaster(t, "max_load 0.000001")
	m.adm.lim.loadBits.Store(0)
	if !m.adm.overLoad(m.cfg.Load()) {
		// The machine may be idle to the last digit; then say so.
		t.Skip("load average 0: nothing to compare")
	}
	m = limitsMaster(t, "max_load 100000")
	if m.adm.overLoad(m.cfg.Load()) {
		t.Error("refused below max_load")
	}
}
