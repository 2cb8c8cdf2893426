package lockd

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"smtp-gated/ipc"
)

var rateOn = []string{"ratelimit_period 3600", "ratelimit_generation 10"}

func TestRateTakeAndCheck(t *testing.T) {
	s, _ := testServer(t, append(rateOn, "ratelimit_connections 3", "ratelimit_sessions 2", "ratelimit_mailfrom_rejects 1")...)
	conn := &ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}}
	for i := range 3 {
		if a := ask(t, s, conn); a.Over != "" {
			t.Fatalf("connection %d: over %q", i+1, a.Over)
		}
	}
	if a := ask(t, s, conn); a.Over != ipc.RateConnections {
		t.Fatalf("connection 4: over %q, want connections", a.Over)
	}
	if r := s.testRecord(t, cli4, ""); r.Count[0] != 3 {
		t.Errorf("connections counted %d, want 3 (a refused one is not counted)", r.Count[0])
	}
	// Another client has counts of its own.
	if a := ask(t, s, &ipc.Policy{Client: cli4b, Take: []string{ipc.RateConnections}}); a.Over != "" {
		t.Fatalf("other client: over %q", a.Over)
	}
	mail := &ipc.Policy{Client: cli4, Take: []string{ipc.RateMessages}, Check: []string{ipc.RateBytes, ipc.RateMailfromRejects}}
	ask(t, s, mail)
	// The MTA refused that MAIL: the message is given back, the
	// rejection counted; the next MAIL is then over mailfrom_rejects.
	refund := []ipc.Delta{{Name: ipc.RateMessages, N: -1}, {Name: ipc.RateMailfromRejects, N: 1}}
	if a := ask(t, s, &ipc.Policy{Client: cli4, Add: refund, Take: mail.Take, Check: mail.Check}); a.Over != ipc.RateMailfromRejects {
		t.Fatalf("after a rejection: over %q, want mailfrom_rejects", a.Over)
	}
	r := s.testRecord(t, cli4, "")
	if r.Count[1] != 0 || r.Count[4] != 1 {
		t.Errorf("messages %d, mailfrom_rejects %d; want 0, 1", r.Count[1], r.Count[4])
	}
	// Counts never go below zero.
	ask(t, s, &ipc.Policy{Client: cli4, Add: []ipc.Delta{{Name: ipc.RateMessages, N: -5}}})
	if r := s.testRecord(t, cli4, ""); r.Count[1] != 0 {
		t.Errorf("messages %d after a refund below zero", r.Count[1])
	}
	// Unknown names are refused, and change nothing.
	for _, q := range []*ipc.Policy{
		{Client: cli4, Take: []string{"frobs"}},
		{Client: cli4, Check: []string{""}},
		{Client: cli4, Add: []ipc.Delta{{Name: ipc.RateBytes, N: 5}, {Name: "x", N: 1}}},
	} {
		if a := s.policy(q); a.Err == "" {
			t.Errorf("%+v: no error", q)
		}
	}
	if r := s.testRecord(t, cli4, ""); r.Count[3] != 0 {
		t.Errorf("bytes %d after a refused request", r.Count[3])
	}
}

// Rate limiting off (ratelimit_period 0): nothing counted, nothing
// written.
func TestRateOff(t *testing.T) {
	s, _ := testServer(t, "ratelimit_connections 1")
	for range 3 {
		if a := ask(t, s, &ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}}); a.Over != "" {
			t.Fatalf("over %q with ratelimit_period 0", a.Over)
		}
	}
	if ents, _ := os.ReadDir(s.cfg.Load().RatelimitPath); len(ents) != 0 {
		t.Errorf("files written with rate limiting off: %v", ents)
	}
}

func TestRatePeriodAndGeneration(t *testing.T) {
	s, _ := testServer(t, append(rateOn, "ratelimit_connections 3")...)
	take := &ipc.Policy{Client: cli6, Ident: "alice", Take: []string{ipc.RateConnections}}
	ask(t, s, take)
	ask(t, s, take)
	r := s.testRecord(t, cli6, "alice")
	if r.Client != "2001_db8__1-alice" || r.Generation != 10 || r.Quota[0] != 3 || r.Count[0] != 2 {
		t.Fatalf("record %+v", r)
	}
	// A higher generation replaces the quotas, counts stay.
	s.setConfig(t, "ratelimit_period 3600", "ratelimit_generation 20", "ratelimit_connections 5")
	ask(t, s, take)
	if r := s.testRecord(t, cli6, "alice"); r.Generation != 20 || r.Quota[0] != 5 || r.Count[0] != 3 {
		t.Fatalf("after generation 20: %+v", r)
	}
	// A lower (or equal) one does not.
	s.setConfig(t, "ratelimit_period 3600", "ratelimit_generation 15", "ratelimit_connections 7")
	ask(t, s, take)
	if r := s.testRecord(t, cli6, "alice"); r.Generation != 20 || r.Quota[0] != 5 || r.Count[0] != 4 {
		t.Fatalf("after generation 15: %+v", r)
	}
	// The period: once it is over, counts start again.
	r = s.testRecord(t, cli6, "alice")
	r.Start -= 3600
	if err := s.storeRecord(s.cfg.Load(), r); err != nil {
		t.Fatal(err)
	}
	ask(t, s, take)
	if r := s.testRecord(t, cli6, "alice"); r.Count[0] != 1 || time.Since(time.Unix(r.Start, 0)) > time.Minute {
		t.Fatalf("after the period: %+v", r)
	}
}

// A corrupt or truncated file is logged and replaced; the client starts
// afresh.
func TestRateCorruptReplaced(t *testing.T) {
	s, lb := testServer(t, append(rateOn, "ratelimit_connections 10")...)
	path := filepath.Join(s.cfg.Load().RatelimitPath, "192.0.2.1")
	take := &ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}}
	ask(t, s, take)
	good, _ := os.ReadFile(path)
	for name, b := range map[string][]byte{
		"garbage":   []byte("\x00\x01garbage\n"),
		"truncated": good[:len(good)/2],
		"empty":     nil,
	} {
		if err := os.WriteFile(path, b, 0o640); err != nil {
			t.Fatal(err)
		}
		if a := ask(t, s, take); a.Over != "" {
			t.Fatalf("%s: over %q", name, a.Over)
		}
		if r := s.testRecord(t, cli4, ""); r.Count[0] != 1 || r.Quota[0] != 10 {
			t.Errorf("%s: record after replacement %+v", name, r)
		}
		if !strings.Contains(lb.String(), "rate-limit file "+path) || !strings.Contains(lb.String(), "corrupt") {
			t.Errorf("%s: not logged:\n%s", name, lb)
		}
	}
}

// Requests from many goroutines (as from several workers at once) are
// counted exactly: with a quota of 20, 20 of 60 pass.
func TestRateConcurrent(t *testing.T) {
	s, _ := testServer(t, append(rateOn, "ratelimit_connections 20")...)
	var passed atomic.Int32
	var wg sync.WaitGroup
	for range 60 {
		wg.Go(func() {
			a := s.policy(&ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}})
			if a.Err != "" {
				t.Error(a.Err)
			}
			if a.Over == "" {
				passed.Add(1)
			}
		})
	}
	wg.Wait()
	if passed.Load() != 20 {
		t.Errorf("%d passed, want 20", passed.Load())
	}
	if r := s.testRecord(t, cli4, ""); r.Count[0] != 20 {
		t.Errorf("count %d, want 20", r.Count[0])
	}
}

// A rate-limit directory lockd cannot write in: the request fails (the
// session answers 4xx), it is not let through.
func TestRateUnwritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes anywhere")
	}
	s, _ := testServer(t, append(rateOn, "ratelimit_connections 10")...)
	os.Chmod(s.cfg.Load().RatelimitPath, 0o500)
	defer os.Chmod(s.cfg.Load().RatelimitPath, 0o755)
	if a := s.policy(&ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}}); a.Err == "" {
		t.Fatalf("answer %+v, want an error", a)
	}
}

func TestSweepRates(t *testing.T) {
	s, _ := testServer(t, append(rateOn, "ratelimit_connections 10")...)
	cfg := s.cfg.Load()
	ask(t, s, &ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}})
	ask(t, s, &ipc.Policy{Client: cli4b, Take: []string{ipc.RateConnections}})
	// cli4b has quotas of its own.
	r := s.testRecord(t, cli4b, "")
	r.Generation = personalGeneration
	s.storeRecord(cfg, r)
	os.WriteFile(filepath.Join(cfg.RatelimitPath, ".tmp-192.0.2.9.123"), nil, 0o600)
	old := time.Now().Add(-2 * time.Minute)
	os.Chtimes(filepath.Join(cfg.RatelimitPath, ".tmp-192.0.2.9.123"), old, old)
	s.sweepRates(cfg, time.Now().Add(2*time.Hour))
	ents, _ := os.ReadDir(cfg.RatelimitPath)
	if len(ents) != 1 || ents[0].Name() != "192.0.2.2" {
		t.Errorf("after the sweep: %v, want the personal record alone", ents)
	}
}
