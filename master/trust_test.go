package master

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"smtp-gated/ipc"
)

// A worker's status rows are kept for its own sessions only, with its
// strings escaped.
func TestOwnRows(t *testing.T) {
	m := limitsMaster(t)
	w1, w2 := &proc{role: ipc.RoleSession, index: 0}, &proc{role: ipc.RoleSession, index: 1}
	m.adm.sessions[1] = &session{worker: w1, done: make(chan struct{})}
	m.adm.sessions[2] = &session{worker: w2, done: make(chan struct{})}
	rows, err := m.adm.ownRows(w1, []ipc.SessionRow{{ID: 1, State: ipc.StateHelo, Ident: "bob\r\n\x1b[2J"}, {ID: 3}})
	if err != nil || len(rows) != 1 || rows[0].Ident != `bob\x0d\x0a\x1b[2J` {
		t.Errorf("own rows: %+v, %v", rows, err)
	}
	if _, err := m.adm.ownRows(w1, []ipc.SessionRow{{ID: 2}}); err == nil {
		t.Errorf("a row of another worker's session kept")
	}
	if _, err := m.adm.ownRows(w1, []ipc.SessionRow{{ID: 1}, {ID: 1}}); err == nil {
		t.Errorf("a session reported twice kept")
	}
}

// Master tells lockd of each session it hands off and of its end, in
// order, and answers lockd's questions with its record.
func TestRegistrar(t *testing.T) {
	m := limitsMaster(t)
	defer m.stop()
	lockd := &proc{role: ipc.RoleLockd, ready: true}
	got := make(chan *ipc.Msg, 16)
	a, b, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := ipc.NewConn(a)
	cb, _ := ipc.NewConn(b)
	a.Close()
	b.Close()
	lockdEnd := ipc.NewPeer(ca, "master", func(_ *ipc.Peer, msg *ipc.Msg) { got <- msg })
	lockd.peer = ipc.NewPeer(cb, "lockd", func(pe *ipc.Peer, msg *ipc.Msg) { m.fromChild(lockd, pe, msg) })
	go lockdEnd.Run()
	go lockd.peer.Run()
	defer lockdEnd.Close()
	defer lockd.peer.Close()
	m.sup.lockd = lockd
	m.reg.start(m.quit, m.sup.lockdPeer, m.log)

	w := &proc{role: ipc.RoleSession, index: 3, sessions: 1}
	src := netip.MustParseAddrPort("192.0.2.9:4000")
	local := netip.MustParseAddrPort("192.0.2.254:9199")
	m.adm.mu.Lock()
	s := &session{worker: w, src: src, local: local, done: make(chan struct{})}
	m.adm.sessions[42] = s
	m.adm.register(42, s)
	m.adm.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := lockdEnd.Call(ctx, ipc.MsgSessionAsk, &ipc.SessionAsk{ID: 42}, ipc.MsgSessionInfo)
	if err != nil {
		t.Fatal(err)
	}
	if i := r.Payload.(*ipc.SessionInfo); !i.Known || i.Worker != 3 || i.Client != src || i.Local != local {
		t.Errorf("session info: %+v", i)
	}
	m.adm.mu.Lock()
	m.adm.forget(42)
	m.adm.mu.Unlock()
	r, err = lockdEnd.Call(ctx, ipc.MsgSessionAsk, &ipc.SessionAsk{ID: 42}, ipc.MsgSessionInfo)
	if err != nil || r.Payload.(*ipc.SessionInfo).Known {
		t.Errorf("an ended session: %v, %v", r, err)
	}
	for _, want := range []ipc.Type{ipc.MsgSessionOpen, ipc.MsgSessionClosed} {
		select {
		case msg := <-got:
			if msg.Type != want {
				t.Fatalf("lockd got %v, want %v", msg.Type, want)
			}
		case <-ctx.Done():
			t.Fatalf("lockd did not get %v", want)
		}
	}
}
