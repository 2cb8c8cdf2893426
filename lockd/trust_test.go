package lockd

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"smtp-gated/ipc"
)

// workerLink links a fake session worker (index worker) to s over a real
// socketpair, served as lockd serves a worker's link; it returns the
// worker's end.
func workerLink(t *testing.T, s *server, worker int) *ipc.Peer {
	t.Helper()
	ca, cb, err := ipc.ConnPair()
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("session %d", worker)
	lp := ipc.NewPeer(ca, name, func(p *ipc.Peer, m *ipc.Msg) { s.fromSession(worker, p, m) })
	wp := ipc.NewPeer(cb, "lockd", func(p *ipc.Peer, m *ipc.Msg) { m.Close() })
	go lp.Run()
	go wp.Run()
	t.Cleanup(func() { wp.Close(); lp.Close() })
	return wp
}

func policyCall(t *testing.T, w *ipc.Peer, q *ipc.Policy) *ipc.PolicyAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := w.Call(ctx, ipc.MsgPolicy, q, ipc.MsgPolicyAnswer)
	if err != nil {
		t.Fatal(err)
	}
	return m.Payload.(*ipc.PolicyAnswer)
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestWorkerManyAddresses: sessions from more addresses than the bound
// on rate-limit files get no file beyond it (and are served); a worker
// naming addresses of no session of its own makes none at all.
func TestWorkerManyAddresses(t *testing.T) {
	s, lb := testServer(t, "ratelimit_period 3600", "ratelimit_connections 5")
	s.maxRateFiles = 50
	w := workerLink(t, s, 1)
	for i := range 120 {
		id := uint64(1000 + i)
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 40000)
		s.sess.open(&ipc.SessionOpen{ID: id, Worker: 1, Client: client})
		if a := policyCall(t, w, &ipc.Policy{ID: id, Client: client, Take: []string{ipc.RateConnections}}); a.Err != "" || a.Over != "" {
			t.Fatalf("session %d: %+v", id, a)
		}
	}
	if n := countFiles(t, s.cfg.Load().RatelimitPath); n != 50 {
		t.Errorf("%d rate-limit files, want the bound, 50", n)
	}
	if !strings.Contains(lb.String(), "the most lockd makes") {
		t.Errorf("the bound not logged:\n%s", lb)
	}

	// Unregistered sessions: no master to ask here, so none is known.
	s2, _ := testServer(t, "ratelimit_period 3600")
	w2 := workerLink(t, s2, 0)
	for i := range 200 {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 1)
		a := policyCall(t, w2, &ipc.Policy{ID: uint64(i), Client: client, Take: []string{ipc.RateConnections}})
		if !strings.Contains(a.Err, "not registered") {
			t.Fatalf("policy of an unknown session: %+v", a)
		}
	}
	if n := countFiles(t, s2.cfg.Load().RatelimitPath); n != 0 {
		t.Errorf("%d rate-limit files for unknown sessions", n)
	}
}

// TestSessionRules: what a worker may ask for a registered session, and
// the sessions table's bound.
func TestSessionRules(t *testing.T) {
	s, lb := testServer(t, "ratelimit_period 3600", "size_limit 1000")
	w := workerLink(t, s, 2)
	s.sess.open(&ipc.SessionOpen{ID: 7, Worker: 2, Client: cli4, Ident: "alice"})
	s.sess.open(&ipc.SessionOpen{ID: 8, Worker: 3, Client: cli4b})
	for _, tc := range []struct {
		q    ipc.Policy
		want string // "" for served
	}{
		{ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Take: []string{ipc.RateMessages, ipc.RateRecipients}}, ""},
		{ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Add: []ipc.Delta{{Name: ipc.RateMailfromRejects, N: 1}, {Name: ipc.RateBytes, N: 900}}}, ""},
		{ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Add: []ipc.Delta{{Name: ipc.RateMessages, N: -1}}}, "rate-limit delta messages -1"},
		{ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Add: []ipc.Delta{{Name: ipc.RateBytes, N: 1000 + spoolSlack + 1}}}, "more than one SMTP event"},
		{ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Add: []ipc.Delta{{Name: ipc.RateRcpttoRejects, N: 2}}}, "more than one SMTP event"},
		{ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Take: []string{ipc.RateMessages, ipc.RateMessages}}, "taken twice"},
		{ipc.Policy{ID: 7, Client: cli4, Ident: "mallory"}, `ident "mallory" is not session 7's`},
		{ipc.Policy{ID: 7, Client: cli4b, Ident: "alice"}, "is not session 7's"},
		{ipc.Policy{ID: 8, Client: cli4b}, "which is session worker 3's"},
	} {
		before := len(lb.String())
		a := policyCall(t, w, &tc.q)
		if (tc.want == "") != (a.Err == "") || !strings.Contains(a.Err, tc.want) {
			t.Errorf("%+v: answer %+v, want %q", tc.q, a, tc.want)
		}
		logged := lb.String()[before:]
		if tc.want != "" && (!strings.Contains(logged, "session worker 2 broke the rules: ") || !strings.Contains(logged, tc.want)) {
			t.Errorf("%+v: breach not logged: %q", tc.q, logged)
		}
	}
	if r := s.testRecord(t, cli4, "alice"); r.Count[counterIndex(ipc.RateMessages)] != 1 || r.Count[counterIndex(ipc.RateBytes)] != 900 {
		t.Errorf("counts after the forgeries: %v", r.Count)
	}
	if _, err := os.Stat(s.cfg.Load().RatelimitPath + "/192.0.2.2"); err == nil {
		t.Errorf("a rate-limit file for another worker's client")
	}

	for i := range maxSessions + 10 {
		s.sess.open(&ipc.SessionOpen{ID: uint64(100 + i), Worker: 1, Client: cli6})
	}
	if n := len(s.sess.m); n > maxSessions {
		t.Errorf("%d sessions in the table, bound %d", n, maxSessions)
	}
}
