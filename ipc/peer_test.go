package ipc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"
)

// peers connects a client Peer (its handler fails the test: a client
// expects nothing but replies) to a server Peer with handler h, runs both,
// and returns the client and a channel with the client's Run result.
func peers(t testing.TB, h Handler) (client *Peer, server *Peer, clientDone <-chan error) {
	t.Helper()
	a, b := connPair(t)
	client = NewPeer(a, "server", func(p *Peer, m *Msg) {
		m.Close()
		t.Errorf("client got an unexpected %v id %d", m.Type, m.ID)
	})
	server = NewPeer(b, "client", h)
	cdone := make(chan error, 1)
	sdone := make(chan error, 1)
	go func() { cdone <- client.Run() }()
	go func() { sdone <- server.Run() }()
	t.Cleanup(func() {
		client.Close()
		server.Close()
		<-sdone
	})
	return client, server, cdone
}

// echo answers a CtlRequest with its Command as Text and a DstQuery with
// the query's Client as Dst.
func echo(p *Peer, m *Msg) {
	defer m.Close()
	switch v := m.Payload.(type) {
	case *CtlRequest:
		code, _ := strconv.Atoi(v.Command)
		p.Reply(m, MsgCtlReply, &CtlReply{Code: CtlStatus(code), Text: v.Command})
	case *DstQuery:
		p.Reply(m, MsgDstAnswer, &DstAnswer{Dst: v.Client})
	}
}

func TestPeerCallsOutOfOrder(t *testing.T) {
	const n = 300
	// The server holds every request until it has all of them, then
	// answers them in a random order.
	reqs := make(chan *Msg, n)
	client, server, done := peers(t, func(p *Peer, m *Msg) { reqs <- m })
	go func() {
		var all []*Msg
		for range n {
			all = append(all, <-reqs)
		}
		rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		for _, m := range all {
			echo(server, m)
		}
	}()

	f := devNulls(t, 1)[0]
	defer f.Close()
	fd := fdOf(t, f)
	samp := samples()[MsgDstQuery].(*DstQuery)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if i%3 == 0 {
				// Some calls carry a descriptor, answered without one.
				q := *samp
				q.Client = netip.AddrPortFrom(samp.Client.Addr(), uint16(i))
				m, err := client.Call(ctx, MsgDstQuery, &q, MsgDstAnswer, fd)
				if err != nil {
					t.Errorf("call %d: %v", i, err)
					return
				}
				defer m.Close()
				if got := m.Payload.(*DstAnswer).Dst; got != q.Client {
					t.Errorf("call %d got the answer for %v", i, got)
				}
				return
			}
			m, err := client.Call(ctx, MsgCtlRequest, &CtlRequest{Command: strconv.Itoa(i)}, MsgCtlReply)
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			defer m.Close()
			r := m.Payload.(*CtlReply)
			if r.Text != strconv.Itoa(i) || r.Code != CtlStatus(i) || !m.Reply {
				t.Errorf("call %d got reply %+v (reply flag %v), want its own", i, r, m.Reply)
			}
		})
	}
	wg.Wait()
	select {
	case err := <-done:
		t.Fatalf("client Run ended: %v", err)
	default:
	}
}

func TestPeerCallTimeoutLateReply(t *testing.T) {
	held := make(chan *Msg, 1)
	client, server, done := peers(t, func(p *Peer, m *Msg) {
		if v, ok := m.Payload.(*CtlRequest); ok && v.Command == "slow" {
			held <- m
			return
		}
		echo(p, m)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	m, err := client.Call(ctx, MsgCtlRequest, &CtlRequest{Command: "slow"}, MsgCtlReply)
	if !errors.Is(err, context.DeadlineExceeded) || m != nil {
		t.Fatalf("Call = %v, %v; want context.DeadlineExceeded", m, err)
	}

	// Cancelled, not timed out, likewise.
	ctx2, cancel2 := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel2)
	if _, err := client.Call(ctx2, MsgCtlRequest, &CtlRequest{Command: "slow"}, MsgCtlReply); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Call: %v, want context.Canceled", err)
	}

	// Both late replies arrive now; they must be dropped, not delivered to
	// the next call and not taken for unsolicited ones.
	for range 2 {
		late := <-held
		if err := server.Reply(late, MsgCtlReply, &CtlReply{Text: "late"}); err != nil {
			t.Fatal(err)
		}
		late.Close()
	}
	for i := range 5 {
		m, err := client.Call(context.Background(), MsgCtlRequest, &CtlRequest{Command: strconv.Itoa(i)}, MsgCtlReply)
		if err != nil {
			t.Fatalf("call after the late replies: %v", err)
		}
		if got := m.Payload.(*CtlReply).Text; got != strconv.Itoa(i) {
			t.Fatalf("call %d got %q, want its own reply", i, got)
		}
		m.Close()
	}
	select {
	case err := <-done:
		t.Fatalf("client Run ended on a late reply: %v", err)
	default:
	}
}

func TestPeerUnsolicitedReply(t *testing.T) {
	client, server, done := peers(t, func(p *Peer, m *Msg) { m.Close() }) // never answers
	pending := make(chan error, 1)
	go func() {
		_, err := client.Call(context.Background(), MsgCtlRequest, &CtlRequest{Command: "x"}, MsgCtlReply)
		pending <- err
	}()
	// Let the call be sent (its id is 1) before the bogus reply.
	waitPending(t, client, 1)
	if err := server.Conn().Send(MsgCtlReply, 12345, true, &CtlReply{Text: "who asked?"}); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Run = %v, want ErrMalformed", err)
	}
	if err := within(t, pending); !errors.Is(err, ErrClosed) {
		t.Fatalf("pending Call = %v, want ErrClosed", err)
	}
	if _, err := client.Call(context.Background(), MsgCtlRequest, &CtlRequest{}, MsgCtlReply); !errors.Is(err, ErrClosed) {
		t.Fatalf("Call after Run ended = %v, want ErrClosed", err)
	}
}

func TestPeerRunEndFailsPending(t *testing.T) {
	client, server, done := peers(t, func(p *Peer, m *Msg) { m.Close() }) // never answers
	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := client.Call(context.Background(), MsgCtlRequest, &CtlRequest{}, MsgCtlReply)
			errs <- err
		}()
	}
	waitPending(t, client, n)
	server.Close()
	if err := within(t, done); err != io.EOF {
		t.Fatalf("Run after the peer closed = %v, want io.EOF", err)
	}
	for range n {
		if err := within(t, errs); !errors.Is(err, ErrClosed) {
			t.Fatalf("pending Call = %v, want ErrClosed", err)
		}
	}
}

func TestPeerWrongReplyType(t *testing.T) {
	f := devNulls(t, 1)[0]
	defer f.Close()
	fd := fdOf(t, f)
	client, _, done := peers(t, func(p *Peer, m *Msg) {
		defer m.Close()
		if m.Type == MsgCtlRequest {
			p.Reply(m, MsgAck, &Ack{})
		} else {
			// A reply of the wrong type with a descriptor of its own.
			p.Reply(m, MsgNewSession, &NewSession{}, fd)
		}
	})
	m, err := client.Call(context.Background(), MsgCtlRequest, &CtlRequest{}, MsgCtlReply)
	if err == nil || m != nil {
		t.Fatalf("Call answered with ACK = %v, %v; want an error", m, err)
	}
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("error %q does not wrap ErrMalformed", err)
	}
	before := openFDs(t)
	if _, err := client.Call(context.Background(), MsgHello, &Hello{}, MsgReady); !errors.Is(err, ErrMalformed) {
		t.Errorf("Call answered with NEW_SESSION = %v, want ErrMalformed", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open, %d before: the wrong reply's descriptor leaked", after, before)
	}
	select {
	case err := <-done:
		t.Fatalf("client Run ended: %v", err)
	default:
	}
}

func TestPeerSendToHandler(t *testing.T) {
	got := make(chan *Msg, 1)
	client, _, _ := peers(t, func(p *Peer, m *Msg) { got <- m })
	want := samples()[MsgSessionEnd]
	if err := client.Send(MsgSessionEnd, want); err != nil {
		t.Fatal(err)
	}
	m := <-got
	defer m.Close()
	if m.Type != MsgSessionEnd || m.Reply || m.ID != 0 || fmt.Sprint(m.Payload) != fmt.Sprint(want) {
		t.Fatalf("handler got %v reply=%v id=%d %+v, want SESSION_END %+v", m.Type, m.Reply, m.ID, m.Payload, want)
	}
}

// within returns what comes on ch, or fails the test after 10 seconds.
func within(t testing.TB, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("nothing after 10s")
		return nil
	}
}

// waitPending waits until p has n calls waiting for their reply.
func waitPending(t testing.TB, p *Peer, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		p.mu.Lock()
		k := len(p.pending)
		p.mu.Unlock()
		if k >= n {
			return
		}
	}
	t.Fatalf("fewer than %d calls pending", n)
}

func BenchmarkRoundTrip(b *testing.B) {
	client, _, _ := peers(b, echo)
	req := &CtlRequest{Version: Version, Command: "1"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		m, err := client.Call(ctx, MsgCtlRequest, req, MsgCtlReply)
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}

func BenchmarkRoundTripFD(b *testing.B) {
	client, _, _ := peers(b, echo)
	f := devNulls(b, 1)[0]
	defer f.Close()
	fd := fdOf(b, f)
	req := samples()[MsgDstQuery]
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		m, err := client.Call(ctx, MsgDstQuery, req, MsgDstAnswer, fd)
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}

// Calls that give up while their reply is on its way must not leak the
// reply's descriptors, whichever way the race goes. (No reply in the
// catalogue carries one today; a wrong-typed reply may, and the next one
// to be added will.)
func TestPeerTimeoutRaceNoLeak(t *testing.T) {
	f := devNulls(t, 1)[0]
	defer f.Close()
	fd := fdOf(t, f)
	client, _, done := peers(t, func(p *Peer, m *Msg) {
		defer m.Close()
		p.Reply(m, MsgPeerLink, &PeerLink{Role: RoleLookup}, fd)
	})
	noGC(t)
	before := openFDs(t)
	var wg sync.WaitGroup
	for i := range 10000 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%200)*time.Microsecond)
			defer cancel()
			m, err := client.Call(ctx, MsgHello, &Hello{}, MsgReady)
			if err == nil {
				m.Close()
				t.Error("a PEER_LINK answer was taken for READY")
			}
		})
		if i%50 == 49 {
			wg.Wait()
		}
	}
	wg.Wait()
	// Replies to abandoned calls may still be on their way: one more call
	// on the same link, answered after them, flushes them through.
	if _, err := client.Call(context.Background(), MsgHello, &Hello{}, MsgReady); !errors.Is(err, ErrMalformed) {
		t.Fatalf("last call: %v, want ErrMalformed", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open, %d before: %d replies' descriptors leaked", after, before, after-before)
	}
	select {
	case err := <-done:
		t.Fatalf("client Run ended: %v", err)
	default:
	}
}

// Ended says whether anything can still come over a link: not while it
// lives, yes once it is closed here or its reader stopped because the
// other end went away.
func TestPeerEnded(t *testing.T) {
	client, server, done := peers(t, func(p *Peer, m *Msg) { m.Close() })
	if client.Ended() || server.Ended() {
		t.Fatal("a live link has ended")
	}
	server.Close()
	if !server.Ended() {
		t.Error("closed here, but not ended")
	}
	<-done
	if !client.Ended() {
		t.Error("the other end is gone and the reader stopped, but not ended")
	}
}
