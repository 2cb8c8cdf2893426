package session

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// An idle session, greeted and after EHLO, holds no buffer: its readers
// and writers gave theirs back. The heap it holds is measured over many
// sessions; with its four buffers of 4 KiB it held over 20 KiB.
func TestIdleSessionHoldsNoBuffer(t *testing.T) {
	const n = 200
	cfg := rigConfig()
	cfg.TimeoutIdle = 300 // the sessions stay while measured
	w := &worker{log: fuzzLog, spool: prepareSpool(t.TempDir(), 0o600, -1, -1)}
	w.cfg.Store(cfg)
	type session struct {
		client, mta *net.TCPConn
		done        chan struct{}
	}
	var all []*session
	t.Cleanup(func() {
		for _, s := range all {
			s.client.Close()
			s.mta.Close()
		}
		for _, s := range all {
			<-s.done
		}
	})
	// read reads from c until want arrived.
	read := func(c *net.TCPConn, want string) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var got []byte
		var b [64]byte
		for !bytes.Contains(got, []byte(want)) {
			k, err := c.Read(b[:])
			if err != nil {
				t.Fatalf("waiting for %q: got %q, %v", want, got, err)
			}
			got = append(got, b[:k]...)
		}
	}
	stats := func() (heap, stack uint64) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, ms.StackInuse
	}
	heap0, stack0 := stats()
	for i := range n {
		client, proxyCli, err := loopPair()
		if err != nil {
			t.Fatal(err)
		}
		proxySrv, mta, err := loopPair()
		if err != nil {
			client.Close()
			proxyCli.Close()
			t.Fatal(err)
		}
		s := &session{client: client, mta: mta, done: make(chan struct{})}
		all = append(all, s)
		c := &conn{id: uint64(i + 1), cfg: cfg, client: proxyCli, start: time.Now(), by: "error",
			src: proxyCli.RemoteAddr().(*net.TCPAddr).AddrPort(), dst: proxySrv.RemoteAddr().(*net.TCPAddr).AddrPort()}
		c.ctx, c.cancel = context.WithCancel(context.Background())
		e := newEngine(w, c, proxySrv)
		e.p = &fakePeers{}
		go func() {
			defer close(s.done)
			defer c.cancel()
			defer proxyCli.Close()
			defer proxySrv.Close()
			e.run()
		}()
		io.WriteString(mta, "220 mta.test ESMTP\r\n")
		read(client, "220 mta.test ESMTP\r\n")
		io.WriteString(client, "EHLO client.test\r\n")
		read(mta, "EHLO client.test\r\n")
		io.WriteString(mta, "250-mta.test\r\n250 PIPELINING\r\n")
		read(client, "250 PIPELINING\r\n")
	}
	// The reply is read before the writer that sent it gives its buffer
	// back: the sessions settle.
	// The race detector adds to every allocation and goroutine.
	limit := float64(8 << 10)
	if raceEnabled {
		limit = 14 << 10
	}
	var heap, stack float64
	for deadline := time.Now().Add(10 * time.Second); ; {
		h, s := stats()
		heap, stack = float64(h-min(h, heap0))/n, float64(s-min(s, stack0))/n
		if heap <= limit || time.Now().After(deadline) {
			break
		}
		runtime.Gosched()
	}
	for i, s := range all {
		select {
		case <-s.done:
			t.Fatalf("session %d ended", i+1)
		default:
		}
	}
	t.Logf("per idle session: heap %.0f bytes, stacks %.0f bytes", heap, stack)
	if heap > limit {
		t.Errorf("an idle session holds %.0f bytes of heap, want at most %.0f", heap, limit)
	}
	// Its two goroutines wait on small stacks (4 KiB each).
	if stack > 10<<10 && !raceEnabled {
		t.Errorf("an idle session holds %.0f bytes of stacks, want at most 10 KiB", stack)
	}
}
