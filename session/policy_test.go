package session

import (
	"bufio"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// fakeLockd links w to an in-process stand-in for lockd that answers
// every request with answer, and records what it was asked.
type fakeLockd struct {
	peer   *ipc.Peer // lockd's end
	mu     sync.Mutex
	asked  []any
	answer func(v any) (ipc.Type, any)
}

func (f *fakeLockd) requests() []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]any{}, f.asked...)
}

func linkFake(t *testing.T, w *worker, answer func(v any) (ipc.Type, any)) *fakeLockd {
	t.Helper()
	a, b, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ipc.NewConn(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := ipc.NewConn(b)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	f := &fakeLockd{answer: answer}
	mine := ipc.NewPeer(ca, "lockd", w.fromLockd)
	theirs := ipc.NewPeer(cb, "session 0", func(p *ipc.Peer, m *ipc.Msg) {
		f.mu.Lock()
		f.asked = append(f.asked, m.Payload)
		f.mu.Unlock()
		typ, v := f.answer(m.Payload)
		p.Reply(m, typ, v)
	})
	f.peer = theirs
	go mine.Run()
	go theirs.Run()
	t.Cleanup(func() { mine.Close(); theirs.Close() })
	w.lockd.Store(mine)
	return f
}

// policyConn is a session whose client socket the test reads.
func policyConn(t *testing.T, w *worker, cfg *config.Config) (*conn, *bufio.Reader) {
	t.Helper()
	far, near := tcpPair(t)
	c := w.newConn(&ipc.NewSession{ID: 3, Client: netip.MustParseAddrPort("192.0.2.7:40000"), Accepted: time.Now().UnixNano()})
	c.cfg = cfg
	c.client = near
	t.Cleanup(func() { w.forget(c) })
	far.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(far)
}

func policyConfig(t *testing.T, extra ...string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nproxy_name gw\n"+strings.Join(extra, "\n")+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestAdmitSession(t *testing.T) {
	cfg := policyConfig(t, "lock_on virus,ratelimit", "ratelimit_period 60", "msg_virus_locked locked out",
		"msg_rate_reject too many", "msg_temp_unavail later")
	for _, tc := range []struct {
		name   string
		answer ipc.PolicyAnswer
		admit  bool
		reply  string
		by     ipc.CloseCause
	}{
		{"clean", ipc.PolicyAnswer{}, true, "", ""},
		{"locked", ipc.PolicyAnswer{Locked: true, Cause: "virus"}, false, "554 gw locked out\r\n", "lock"},
		{"over", ipc.PolicyAnswer{Over: ipc.RateConnections}, false, "554 gw too many\r\n", "ratelimit"},
		{"error", ipc.PolicyAnswer{Err: "disk full"}, false, "421 gw later\r\n", "lockd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := testWorker()
			f := linkFake(t, w, func(v any) (ipc.Type, any) {
				if _, ok := v.(*ipc.Found); ok {
					return ipc.MsgAck, &ipc.Ack{}
				}
				return ipc.MsgPolicyAnswer, &tc.answer
			})
			c, r := policyConn(t, w, cfg)
			done := make(chan bool, 1)
			go func() { done <- w.admitSession(c) }()
			var line string
			if !tc.admit {
				line, _ = r.ReadString('\n')
				c.client.Close() // the client leaves: no wait for its FIN
			}
			if got := <-done; got != tc.admit {
				t.Fatalf("admitSession = %v, want %v", got, tc.admit)
			}
			asked := f.requests()
			q, ok := asked[0].(*ipc.Policy)
			if !ok || !q.Lock || len(q.Take) != 1 || q.Take[0] != ipc.RateConnections || q.Client != c.src {
				t.Errorf("asked %+v, want the lock state and a connection taken", asked[0])
			}
			if tc.admit {
				return
			}
			if line != tc.reply || c.by != tc.by {
				t.Errorf("reply %q by %q, want %q by %q", line, c.by, tc.reply, tc.by)
			}
			// As in 1.4, a count that is no rejection locks no one.
			if len(asked) != 1 {
				t.Errorf("requests %+v, want no found event", asked)
			}
		})
	}
}

// No lockd at all, or a link that ended: a 421 at once.
func TestAdmitSessionLockdGone(t *testing.T) {
	cfg := policyConfig(t, "lock_on virus")
	w := testWorker()
	refused := func() {
		t.Helper()
		c, r := policyConn(t, w, cfg)
		start := time.Now()
		done := make(chan bool, 1)
		go func() { done <- w.admitSession(c) }()
		line, _ := r.ReadString('\n')
		if took := time.Since(start); !strings.HasPrefix(line, "421 ") || took > time.Second {
			t.Errorf("reply %q after %v, want a 421 at once", line, took)
		}
		c.client.Close() // the client leaves: no wait for its FIN
		if <-done || c.by != "lockd" {
			t.Errorf("admitted, or by %q", c.by)
		}
	}
	refused()
	f := linkFake(t, w, func(any) (ipc.Type, any) { return ipc.MsgPolicyAnswer, &ipc.PolicyAnswer{} })
	w.lockd.Load().Close()
	time.Sleep(50 * time.Millisecond)
	refused()
	if n := len(f.requests()); n != 0 {
		t.Errorf("%d requests reached a closed link", n)
	}
	// Neither locking nor rate limits: lockd is not asked.
	c, _ := policyConn(t, w, policyConfig(t, "lock_duration 0"))
	if !w.admitSession(c) {
		t.Error("refused with locking and rate limits off")
	}
}

func TestRateAnswerAndReplies(t *testing.T) {
	w := testWorker()
	cfg := policyConfig(t, "ratelimit_period 60")
	c, _ := policyConn(t, w, cfg)
	e := &engine{w: w, c: c, cfg: cfg, log: w.log}
	e.rateAnswer("MAIL", 250)
	e.rateAnswer("MAIL", 550)
	e.rateAnswer("RCPT", 450)
	e.rateAnswer("AUTH", 334)
	e.rateAnswer("AUTH", 535)
	e.rateAnswer("DATA", 554)
	// Only AUTH refusals wait for the next request: a message and a
	// recipient count when they go (and stay counted), a MAIL or RCPT
	// refusal is counted as it comes (rejectLimit).
	want := []ipc.Delta{{Name: "auth_rejects", N: 1}}
	got := c.pol.takePending()
	if len(got) != len(want) {
		t.Fatalf("pending %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("pending[%d] %v, want %v", i, got[i], want[i])
		}
	}
	if p := c.pol.takePending(); len(p) != 0 {
		t.Errorf("taken twice: %v", p)
	}
	// 1.4's replies (and the nearest for what 1.4 did not apply).
	for _, tc := range []struct {
		name     string
		code     int
		enhanced string
		text     string
	}{
		{ipc.RateConnections, 554, "", cfg.MsgRateReject},
		{ipc.RateMessages, 552, "5.3.2", cfg.MsgRatelimitMessages},
		{ipc.RateRecipients, 552, "5.3.2", cfg.MsgRatelimitRcptto},
		{ipc.RateBytes, 552, "5.3.2", cfg.MsgRatelimitMessages},
		{ipc.RateMailfromRejects, 550, "5.7.1", cfg.MsgRatelimitMailfromRejects},
		{ipc.RateRcpttoRejects, 550, "5.7.1", cfg.MsgRatelimitRcpttoRejects},
		{ipc.RateAuthRejects, 454, "4.7.0", cfg.MsgRateReject},
	} {
		code, enhanced, text := rateReply(cfg, tc.name)
		if code != tc.code || enhanced != tc.enhanced || text != tc.text {
			t.Errorf("%s: %d %s %q, want %d %s %q", tc.name, code, enhanced, text, tc.code, tc.enhanced, tc.text)
		}
	}
	if !cfg.WantsEvent(config.LockVirus) || cfg.WantsEvent(config.LockSpam) {
		t.Error("WantsEvent with lock_on virus")
	}
	if script := policyConfig(t, "lock_on never", "action_script /bin/true"); !script.WantsEvent(config.LockMaxHost) ||
		script.WantsEvent(config.LockDNSBL) {
		t.Error("WantsEvent with an action script and no locking")
	}
}
