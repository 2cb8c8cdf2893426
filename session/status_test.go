package session

import (
	"bytes"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

func testWorker() *worker {
	w := &worker{log: logx.Discard()}
	w.cfg.Store(config.Default())
	return w
}

// The status query reads a session's fields while its goroutines change
// them (run with -race), and sees what they did.
func TestStatusWhileRunning(t *testing.T) {
	w := testWorker()
	c := w.newConn(&ipc.NewSession{ID: 5, Client: netip.MustParseAddrPort("192.0.2.7:40112"), Accepted: time.Now().UnixNano()})
	if l := w.rows(&ipc.SessionsQuery{}); len(l.Rows) != 1 || l.Rows[0].State != "start" {
		t.Fatalf("rows of a session just handed over: %+v", l.Rows)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the session's goroutines
		defer wg.Done()
		c.setState(stConnect)
		c.setDestination(netip.MustParseAddrPort("198.51.100.25:25"), "bob")
		for range 100 {
			io.Copy(io.Discard, counter{bytes.NewReader(make([]byte, 10)), &c.cliRx})
			c.trns.Add(1)
			c.authFlag.Or(authAdvertised)
			c.setState(stData)
		}
	}()
	go func() { // master's queries
		defer wg.Done()
		for range 100 {
			w.rows(&ipc.SessionsQuery{IDs: []uint64{5}})
		}
	}()
	wg.Wait()
	r := w.rows(&ipc.SessionsQuery{}).Rows[0]
	want := ipc.SessionRow{ID: 5, State: "data", Target: netip.MustParseAddrPort("198.51.100.25:25"), Ident: "bob",
		Transaction: 100, Auth: authAdvertised, ClientRx: 1000}
	if r != want {
		t.Errorf("row %+v, want %+v", r, want)
	}
	if l := w.rows(&ipc.SessionsQuery{IDs: []uint64{6}}); len(l.Rows) != 0 {
		t.Errorf("rows for another id: %+v", l.Rows)
	}

	// kill cancels the session's context; an unknown id is an error.
	if a := w.killSession(&ipc.KillSession{ID: 6}); a.Err == "" {
		t.Errorf("kill of an unknown session acknowledged")
	}
	if a := w.killSession(&ipc.KillSession{ID: 5}); a.Err != "" {
		t.Errorf("kill: %s", a.Err)
	}
	select {
	case <-c.ctx.Done():
	default:
		t.Errorf("kill did not cancel the session's context")
	}
	if !c.killed.Load() {
		t.Errorf("killed not recorded")
	}
	w.forget(c)
	if l := w.rows(&ipc.SessionsQuery{}); len(l.Rows) != 0 {
		t.Errorf("rows after the session ended: %+v", l.Rows)
	}
}

// In direct mode the bytes are counted as they move, not at the end.
func TestRelayIntoCountsLive(t *testing.T) {
	client, proxyC := tcpPair(t)
	proxyS, server := tcpPair(t)
	var cli, srv atomicCounters
	done := make(chan string, 1)
	go func() { done <- string(relayInto(proxyC, proxyS, 5*time.Second, &cli.a, &srv.a)) }()
	client.Write(make([]byte, 3000))
	if _, err := io.ReadFull(server, make([]byte, 3000)); err != nil {
		t.Fatal(err)
	}
	server.Write([]byte("220 hi\r\n"))
	io.ReadFull(client, make([]byte, 8))
	for deadline := time.Now().Add(5 * time.Second); cli.a.Load() != 3000 || srv.a.Load() != 8; {
		if time.Now().After(deadline) {
			t.Fatalf("while relaying: counted %d/%d, want 3000/8", cli.a.Load(), srv.a.Load())
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case by := <-done:
		t.Fatalf("relay ended (%s) before the sides closed", by)
	default:
	}
	client.Close()
	if by := <-done; by != "client" {
		t.Errorf("by=%s, want client", by)
	}
}

type atomicCounters struct{ a atomic.Uint64 }
