package session

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"smtp-gated/ipc"
)

// slowScanner is a scanner whose verdicts take delay.
type slowScanner struct {
	*fakePeers
	delay time.Duration
}

func (s slowScanner) scanLink() scanLink { return s }

func (s slowScanner) scan(ctx context.Context, typ ipc.Type, q *ipc.Scan, fd int) (*ipc.Verdict, error) {
	time.Sleep(s.delay) // the scanner at work
	return s.fakePeers.scan(ctx, typ, q, fd)
}

// timeout_idle measures silence: a body that takes four times
// timeout_idle to arrive, a byte every quarter of it, reaches the MTA and
// its reply the client; so does a message whose scan takes twice
// timeout_idle.
func TestIdleMeasuresSilence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines int
		every time.Duration
		scan  time.Duration
	}{
		{"slow upload", 16, 250 * time.Millisecond, 0},
		{"slow scan", 1, 0, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := rigConfig()
			cfg.TimeoutIdle = 1
			r := startRig(t, cfg, slowScanner{&fakePeers{}, tc.scan})
			r.transaction()
			start := time.Now()
			for i := range tc.lines {
				line := fmt.Sprintf("line %d", i)
				r.send("c", line)
				r.expect("m", line)
				time.Sleep(tc.every) // the slow client
			}
			r.send("c", ".")
			r.expect("m", ".")
			r.send("m", "250 2.0.0 Ok: queued")
			r.expect("c", "250 2.0.0 Ok: queued")
			if took := time.Since(start); took < 2*time.Second {
				t.Errorf("the message took %v: not longer than timeout_idle", took)
			}
			r.send("c", "QUIT")
			r.expect("m", "QUIT")
			r.send("m", "221 2.0.0 Bye")
			r.expect("c", "221 2.0.0 Bye")
			if by := r.wait(); by != "quit" {
				t.Errorf("closed by %q, want quit", by)
			}
		})
	}
}

// Silence on both sides for timeout_idle ends the session: a client that
// stops in the middle of its message (the MTA never gets the final dot),
// and an MTA that does not answer the final dot.
func TestIdleSilence(t *testing.T) {
	for _, tc := range []struct {
		name string
		dot  bool
	}{{"client silent in DATA", false}, {"MTA silent after the dot", true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := rigConfig()
			cfg.TimeoutIdle = 1
			r := startRig(t, cfg, &fakePeers{})
			r.transaction()
			r.send("c", "Subject: half a message")
			r.expect("m", "Subject: half a message")
			if tc.dot {
				r.send("c", ".")
				r.expect("m", ".")
			}
			start := time.Now()
			if rest := r.eof("m", 5*time.Second); strings.Contains(rest, ".\r\n") {
				t.Errorf("the MTA got %q", rest)
			}
			r.eof("c", 5*time.Second)
			if took := time.Since(start); took < 900*time.Millisecond || took > 3*time.Second {
				t.Errorf("cut off after %v, want timeout_idle (1s)", took)
			}
			if by := r.wait(); by != "idle" {
				t.Errorf("closed by %q, want idle", by)
			}
		})
	}
}
