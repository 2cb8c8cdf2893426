package session

import (
	"context"
	"errors"
	"sync"
	"testing"

	"smtp-gated/ipc"
)

// scriptedLockd is lockd answering every Policy request with answer, and
// recording the requests.
type scriptedLockd struct {
	*fakePeers
	mu     sync.Mutex
	asked  []*ipc.Policy
	answer func(q *ipc.Policy) (*ipc.PolicyAnswer, error)
}

func (l *scriptedLockd) askLockd(_ context.Context, q *ipc.Policy) (*ipc.PolicyAnswer, error) {
	l.mu.Lock()
	l.asked = append(l.asked, q)
	l.mu.Unlock()
	return l.answer(q)
}

func (l *scriptedLockd) requests() []*ipc.Policy {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*ipc.Policy(nil), l.asked...)
}

// A 4xx reply to RCPT is not counted; a 5xx is counted as it comes. A
// lockd that cannot count it is logged, and the MTA's own refusal goes to
// the client: nothing is refused for it, and the session goes on.
func TestRejectCounted(t *testing.T) {
	cfg := rigConfig()
	cfg.RatelimitExpiration = 60
	l := &scriptedLockd{fakePeers: &fakePeers{}, answer: func(q *ipc.Policy) (*ipc.PolicyAnswer, error) {
		if len(q.Take) == 1 && q.Take[0] == ipc.RateRcpttoRejects {
			return nil, errors.New("lockd: not available")
		}
		return &ipc.PolicyAnswer{}, nil
	}}
	r := startRig(t, cfg, l)
	r.send("m", "220 mta.test ESMTP")
	r.expect("c", "220 mta.test ESMTP")
	r.send("c", "MAIL FROM:<a@client.test>")
	r.expect("m", "MAIL FROM:<a@client.test>")
	r.send("m", "250 2.1.0 Ok")
	r.expect("c", "250 2.1.0 Ok")
	r.send("c", "RCPT TO:<later@mta.test>")
	r.expect("m", "RCPT TO:<later@mta.test>")
	r.send("m", "450 4.2.0 later")
	r.expect("c", "450 4.2.0 later")
	r.send("c", "RCPT TO:<nobody@mta.test>")
	r.expect("m", "RCPT TO:<nobody@mta.test>")
	r.send("m", "550 5.1.1 nobody")
	r.expect("c", "550 5.1.1 nobody")
	r.send("c", "NOOP")
	r.expect("m", "NOOP")
	r.send("m", "250 2.0.0 Ok")
	r.expect("c", "250 2.0.0 Ok")
	var takes []string
	for _, q := range l.requests() {
		takes = append(takes, q.Take...)
	}
	want := []string{ipc.RateRecipients, ipc.RateRecipients, ipc.RateRcpttoRejects}
	if len(takes) != len(want) {
		t.Fatalf("counted %q, want %q", takes, want)
	}
	for i := range want {
		if takes[i] != want[i] {
			t.Errorf("counted %q, want %q", takes, want)
		}
	}
}

// The MTA's refusal of MAIL FROM over ratelimit_mailfrom_rejects: the
// client gets the proxy's 550 in its place, and so every command it had
// pipelined behind it (QUIT gets 221); the MTA gets QUIT and is closed;
// the session is a takeover session, closed by=ratelimit.
func TestRejectOverLimit(t *testing.T) {
	cfg := rigConfig()
	cfg.RatelimitExpiration = 60
	cfg.MsgRatelimitMailfromRejects = "too many refused senders"
	cfg.MsgSignOff = "bye"
	l := &scriptedLockd{fakePeers: &fakePeers{}, answer: func(q *ipc.Policy) (*ipc.PolicyAnswer, error) {
		if len(q.Take) == 1 && q.Take[0] == ipc.RateMailfromRejects {
			return &ipc.PolicyAnswer{Over: ipc.RateMailfromRejects}, nil
		}
		return &ipc.PolicyAnswer{}, nil
	}}
	r := startRig(t, cfg, l)
	r.send("m", "220 mta.test ESMTP")
	r.expect("c", "220 mta.test ESMTP")
	r.send("c", "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mta.test>\r\nNOOP\r\nQUIT")
	r.expect("m", "MAIL FROM:<a@client.test>")
	r.expect("m", "RCPT TO:<b@mta.test>")
	r.expect("m", "NOOP")
	r.expect("m", "QUIT")
	r.send("m", "553 5.7.1 sender refused")
	r.expect("m", "QUIT")
	if rest := r.eof("m", 5e9); rest != "" {
		t.Errorf("the MTA got %q after QUIT", rest)
	}
	r.expect("c", "550 proxy.test too many refused senders")
	r.expect("c", "550 proxy.test too many refused senders")
	r.expect("c", "550 proxy.test too many refused senders")
	r.expect("c", "221 proxy.test bye")
	r.send("c", "MAIL FROM:<a@client.test>")
	r.expect("c", "451 proxy.test too many refused senders")
	r.send("c", "QUIT")
	r.expect("c", "221 proxy.test bye")
	if by := r.wait(); by != "ratelimit" {
		t.Errorf("closed by %q, want ratelimit", by)
	}
}

// The client's next command after the refusal that took the session over
// goes to the takeover session, however the read of it and the takeover
// fall in time (a read deadline does not stop a read under way): many
// sessions, each must answer it.
func TestRejectTakeoverNextCommand(t *testing.T) {
	for i := range 200 {
		cfg := rigConfig()
		cfg.RatelimitExpiration = 60
		cfg.MsgRatelimitMailfromRejects = "too many"
		l := &scriptedLockd{fakePeers: &fakePeers{}, answer: func(q *ipc.Policy) (*ipc.PolicyAnswer, error) {
			return &ipc.PolicyAnswer{Over: ipc.RateMailfromRejects}, nil
		}}
		r := startRig(t, cfg, l)
		r.send("m", "220 mta.test ESMTP")
		r.expect("c", "220 mta.test ESMTP")
		r.send("c", "MAIL FROM:<a@client.test>")
		r.expect("m", "MAIL FROM:<a@client.test>")
		r.send("m", "553 5.7.1 sender refused")
		r.expect("c", "550 proxy.test too many")
		r.send("c", "RCPT TO:<b@mta.test>")
		r.expect("c", "503 proxy.test "+cfg.MsgProtoError)
		r.send("c", "QUIT")
		if by := r.wait(); by != "ratelimit" {
			t.Fatalf("session %d: closed by %q, want ratelimit", i, by)
		}
	}
}
