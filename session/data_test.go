package session

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// gateScanner is a scanner that tells asked when a scan starts and
// gives its verdict when the test sends it on verdict.
type gateScanner struct {
	*fakePeers
	asked   chan struct{}
	verdict chan *ipc.Verdict
}

func (s gateScanner) scanLink() scanLink { return s }

func (s gateScanner) scan(ctx context.Context, _ ipc.Type, _ *ipc.Scan, _ int) (*ipc.Verdict, error) {
	s.asked <- struct{}{}
	select {
	case v := <-s.verdict:
		return v, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// A short message goes to the MTA in one piece with its final dot, NAT
// header included, once the verdict is known: when the scan starts the
// MTA has got nothing of it (the proxy wrote it to the MTA before it
// asked, had it written it). A message found infected never reaches the
// MTA at all.
func TestShortMessageGoesWithDot(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    ipc.Verdict
	}{
		{"clean", ipc.Verdict{Kind: ipc.VerdictClean}},
		{"virus", ipc.Verdict{Kind: ipc.VerdictVirus, Name: "Test-Signature"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := rigConfig()
			cfg.NatHeaderType = config.NatHeaderIPOnly
			s := gateScanner{&fakePeers{}, make(chan struct{}), make(chan *ipc.Verdict, 1)}
			r := startRig(t, cfg, s)
			t.Cleanup(func() {
				select { // a scan that waits when the test fails ends
				case s.verdict <- &ipc.Verdict{Kind: ipc.VerdictError}:
				default:
				}
			})
			r.transaction()
			r.send("c", "Subject: short\r\n\r\nbody\r\n.")
			select {
			case <-s.asked:
			case <-time.After(5 * time.Second):
				t.Fatal("no scan asked for")
			}
			r.mta.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if b, err := r.mr.Peek(1); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the MTA got %q, %v before the verdict; want nothing yet", b, err)
			}
			s.verdict <- &tc.v
			if tc.v.Kind == ipc.VerdictVirus {
				if got := r.eof("m", 5*time.Second); got != "" {
					t.Errorf("the MTA got %q of an infected message; want nothing", got)
				}
				r.expect("c", "550 proxy.test "+cfg.MsgVirusFound+" (Test-Signature)")
				return
			}
			r.expect("m", natName+": 127.0.0.1")
			r.expect("m", "Subject: short")
			r.expect("m", "")
			r.expect("m", "body")
			r.expect("m", ".")
			r.send("m", delivered)
			r.expect("c", delivered)
		})
	}
}
