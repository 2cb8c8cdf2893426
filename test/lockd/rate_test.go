package lockd

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// parallel runs n sessions from one address at once; each gets the
// greeting, then body runs with the client, and holds its session until
// every session has had its say (so that they spread over the workers).
// It returns how many times each code came back from body.
func parallel(t *testing.T, s *setup, n int, body func(c *harness.Client) int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	var answered sync.WaitGroup
	answered.Add(n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			conn, err := net.DialTimeout("tcp", s.addr(), 10*time.Second)
			if err != nil {
				t.Errorf("dial: %v", err)
				answered.Done()
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			c := harness.FromConn(t, conn)
			code := body(c)
			mu.Lock()
			codes[code]++
			mu.Unlock()
			answered.Done()
			answered.Wait()
		})
	}
	wg.Wait()
	return codes
}

// reply reads one reply without failing the test (the goroutines of
// parallel must not call t.Fatal).
func reply(c *harness.Client) int {
	code, _, _ := c.Reply()
	return code
}

func send(c *harness.Client, line string) int {
	if _, err := c.Conn().Write([]byte(line + "\r\n")); err != nil {
		return -1
	}
	return reply(c)
}

// workersUsed counts the session workers that logged a CLOSE line of
// cause by.
func workersUsed(d *harness.Daemon, by string) int {
	seen := map[string]bool{}
	re := regexp.MustCompile(`smtp-gated\[(\d+)\]: \w+: CLOSE by=` + by + `,`)
	for _, l := range d.LogLines() {
		if m := re.FindStringSubmatch(l); m != nil {
			seen[m[1]] = true
		}
	}
	return len(seen)
}

// N+1 connections, messages and recipients from one address over limits
// of N, all at once over four session workers: exactly N pass.
func TestRateLimits(t *testing.T) {
	t.Run("connections", func(t *testing.T) {
		s := newSetup(t)
		d := s.start(t, "ratelimit_period 3600", "ratelimit_connections 20", "msg_rate_reject too many connections")
		codes := parallel(t, s, 21, func(c *harness.Client) int {
			code, text, _ := c.Reply()
			if code == 554 && !strings.Contains(text, "test-proxy too many connections") {
				t.Errorf("refusal %q", text)
			}
			if code == 220 {
				send(c, "QUIT")
			}
			return code
		})
		if codes[220] != 20 || codes[554] != 1 {
			t.Fatalf("greetings by code %v, want 20 × 220 and 1 × 554", codes)
		}
		if n, q := s.counter(t, "127.0.0.1", "connections"); n != 20 || q != 20 {
			t.Errorf("connections %d of %d, want 20 of 20", n, q)
		}
		d.WaitLog(t, regexp.MustCompile(`CLOSE by=ratelimit, `), 5*time.Second)
		if w := workersUsed(d, "quit"); w < 2 {
			t.Errorf("the sessions ran on %d worker(s): the test wants them spread", w)
		}
	})
	t.Run("messages", func(t *testing.T) {
		s := newSetup(t)
		d := s.start(t, "ratelimit_period 3600", "ratelimit_sessions 10", "msg_ratelimit_messages too many messages")
		// As 1.4, a message counts at DATA, before it goes: whatever the
		// MTA answers (here 554, no valid recipients).
		codes := parallel(t, s, 11, func(c *harness.Client) int {
			if reply(c) != 220 || send(c, "EHLO client.test") != 250 || send(c, "MAIL FROM:<a@example.com>") != 250 ||
				send(c, "RCPT TO:<reject@example.org>") != 550 {
				return -1
			}
			code := send(c, "DATA")
			send(c, "QUIT")
			return code
		})
		if codes[554] != 10 || codes[552] != 1 {
			t.Fatalf("DATA replies by code %v, want 10 × 554 (from Postfix) and 1 × 552", codes)
		}
		if n, _ := s.counter(t, "127.0.0.1", "messages"); n != 10 {
			t.Errorf("messages %d, want 10", n)
		}
		if w := workersUsed(d, "quit"); w < 2 {
			t.Errorf("the sessions ran on %d worker(s)", w)
		}
		// With the quota reached, MAIL and RCPT pass; DATA gets 552.
		c := harness.Dial(t, s.addr())
		c.Expect(220)
		c.Ehlo("client.test")
		c.Cmd("MAIL FROM:<a@example.com>", 250)
		c.Cmd("RCPT TO:<b@example.org>", 250)
		if r := c.Cmd("DATA", 552); !strings.Contains(r, "5.3.2 test-proxy too many messages") {
			t.Errorf("DATA over the quota: %q", r)
		}
		c.Quit()
	})
	t.Run("recipients", func(t *testing.T) {
		s := newSetup(t)
		s.start(t, "ratelimit_period 3600", "ratelimit_recipients 7")
		var mu sync.Mutex
		rcpts := map[int]int{}
		parallel(t, s, 4, func(c *harness.Client) int {
			if reply(c) != 220 || send(c, "EHLO client.test") != 250 || send(c, "MAIL FROM:<a@example.com>") != 250 {
				return -1
			}
			for _, to := range []string{"b@example.org", "c@example.org"} {
				code := send(c, "RCPT TO:<"+to+">")
				mu.Lock()
				rcpts[code]++
				mu.Unlock()
			}
			send(c, "QUIT")
			return 0
		})
		if rcpts[250] != 7 || rcpts[552] != 1 {
			t.Fatalf("RCPT replies by code %v, want 7 × 250 and 1 × 552", rcpts)
		}
		if n, _ := s.counter(t, "127.0.0.1", "recipients"); n != 7 {
			t.Errorf("recipients %d, want 7", n)
		}
		// As 1.4, a recipient counts at RCPT, whatever the MTA answers;
		// a refusal (5xx) counts as a rejection too.
		s.mustCtl(t, "ratelimit", "reset", "127.0.0.1")
		c := harness.Dial(t, s.addr())
		c.Expect(220)
		c.Ehlo("client.test")
		c.Cmd("MAIL FROM:<a@example.com>", 250)
		c.Cmd("RCPT TO:<reject@example.org>", 550)
		c.Cmd("RCPT TO:<b@example.org>", 250)
		c.Quit()
		waitCounter(t, s, "rcptto_rejects", 1)
		if n, _ := s.counter(t, "127.0.0.1", "recipients"); n != 2 {
			t.Errorf("recipients %d after one refused and one accepted, want 2", n)
		}
	})
	t.Run("rejects", func(t *testing.T) {
		// As 1.4: Postfix's 5xx to RCPT counts; the one over the quota
		// is answered by the proxy, Postfix gets QUIT, and the session
		// is taken over.
		s := newSetup(t)
		d := s.start(t, "ratelimit_period 3600", "ratelimit_rcptto_rejects 1", "msg_ratelimit_rcptto_rejects too many refused")
		c := harness.Dial(t, s.addr())
		c.Expect(220)
		c.Ehlo("client.test")
		c.Cmd("MAIL FROM:<a@example.com>", 250)
		if r := c.Cmd("RCPT TO:<reject@example.org>", 550); !strings.Contains(r, "5.1.1") {
			t.Errorf("first refusal: %q, want Postfix's", r)
		}
		if r := c.Cmd("RCPT TO:<reject@example.org>", 550); !strings.Contains(r, "5.7.1 test-proxy too many refused") {
			t.Errorf("refusal over the quota: %q, want the proxy's", r)
		}
		c.Cmd("RCPT TO:<b@example.org>", 503) // takeover: no more recipients
		c.Quit()
		d.WaitLog(t, regexp.MustCompile(`CLOSE by=ratelimit, `), 5*time.Second)
		if n, _ := s.counter(t, "127.0.0.1", "rcptto_rejects"); n != 1 {
			t.Errorf("rcptto_rejects %d, want 1", n)
		}
	})
}

// waitCounter waits for a counter the end of a session reports.
func waitCounter(t *testing.T, s *setup, name string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := s.counter(t, "127.0.0.1", name)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %d, want %d", name, n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A higher ratelimit_generation replaces the quotas of existing records
// at a reload, a lower one does not; a personal quota set with
// smtpgatectl survives reloads and a restart.
func TestRateGenerations(t *testing.T) {
	s := newSetup(t)
	rate := func(gen, conns int) []string {
		return []string{"ratelimit_period 3600", "ratelimit_generation " + strconv.Itoa(gen), "ratelimit_connections " + strconv.Itoa(conns)}
	}
	d := s.start(t, rate(10, 30)...)
	connect := func(ip string) {
		t.Helper()
		code, text, c := greeting(t, ip, s.addr())
		if code != 220 {
			t.Fatalf("connection from %s: %d %q", ip, code, text)
		}
		c.Quit()
	}
	reload := func(gen, conns int) {
		t.Helper()
		if err := os.WriteFile(d.ConfigFile(), []byte(s.config(rate(gen, conns)...)), 0o644); err != nil {
			t.Fatal(err)
		}
		d.Reload(t)
	}
	connect("127.0.0.1")
	connect("127.0.0.2")
	if _, q := s.counter(t, "127.0.0.1", "connections"); q != 30 {
		t.Fatalf("quota %d, want 30", q)
	}
	// 127.0.0.2 gets a quota of its own.
	s.mustCtl(t, "ratelimit", "set", "127.0.0.2", "connections=3")
	reload(20, 50)
	connect("127.0.0.1")
	connect("127.0.0.2")
	if _, q := s.counter(t, "127.0.0.1", "connections"); q != 50 {
		t.Errorf("after a higher generation: quota %d, want 50", q)
	}
	reload(15, 70)
	connect("127.0.0.1")
	if _, q := s.counter(t, "127.0.0.1", "connections"); q != 50 {
		t.Errorf("after a lower generation: quota %d, want 50", q)
	}
	if n, q := s.counter(t, "127.0.0.2", "connections"); n != 2 || q != 3 {
		t.Errorf("personal quota after reloads: %d of %d, want 2 of 3", n, q)
	}
	// A restart: the files are the state.
	d.Stop(t)
	d = harness.StartDaemon(t, s.config(rate(30, 100)...))
	if n, q := s.counter(t, "127.0.0.2", "connections"); n != 2 || q != 3 {
		t.Errorf("personal quota after a restart: %d of %d, want 2 of 3", n, q)
	}
	connect("127.0.0.2")
	if code, _, _ := greeting(t, "127.0.0.2", s.addr()); code != 554 {
		t.Errorf("fourth connection over a personal quota of 3: %d, want 554", code)
	}
	if _, q := s.counter(t, "127.0.0.1", "connections"); q != 100 {
		t.Errorf("after a restart with a higher generation: quota %d, want 100", q)
	}
	// Only root (or the daemon's user) changes quotas; anyone may look.
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
	if code, out := s.ctl(t, nobody, "ratelimit", "show", "127.0.0.2"); code != 0 || !strings.Contains(out, "connections") {
		t.Errorf("ratelimit show as nobody: exit %d %q", code, out)
	}
	for _, args := range [][]string{{"ratelimit", "set", "127.0.0.2", "connections=9"}, {"ratelimit", "reset", "127.0.0.2"},
		{"lock", "127.0.0.2"}, {"unlock", "127.0.0.2"}} {
		if code, out := s.ctl(t, nobody, args...); code != 4 || !strings.Contains(out, "permission denied") {
			t.Errorf("%v as nobody: exit %d %q, want 4", args, code, out)
		}
	}
	if code, out := s.ctl(t, nobody, "locks"); code != 0 {
		t.Errorf("locks as nobody: exit %d %q", code, out)
	}
	for _, args := range [][]string{{"ratelimit", "show", "mail.example.org"}, {"ratelimit", "set", "127.0.0.2", "frobs=1"},
		{"lock", "300.1.2.3"}} {
		if code, out := s.ctl(t, nil, args...); code != 2 {
			t.Errorf("%v: exit %d %q, want 2 (usage)", args, code, out)
		}
	}
}

// A rate-limit file that is damaged or truncated is logged and replaced;
// the client is served, counted from a fresh record.
func TestRateFileCorrupt(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "ratelimit_period 3600", "ratelimit_connections 100")
	path := filepath.Join(s.rateDir(), "127.0.0.1")
	connect := func() {
		t.Helper()
		code, text, c := greeting(t, "127.0.0.1", s.addr())
		if code != 220 {
			t.Fatalf("connection: %d %q, want 220", code, text)
		}
		c.Quit()
	}
	connect()
	connect()
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"truncated": good[:len(good)*2/3],
		"damaged":   []byte(strings.Replace(string(good), "connections 2 100", "connections 0 100", 1)),
		"garbage":   []byte("\x7fELF\x00\x00garbage"),
		"empty":     {},
	} {
		mark := d.Mark()
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		connect()
		d.WaitLogAfter(t, mark, regexp.MustCompile(`rate-limit file `+regexp.QuoteMeta(path)+`: corrupt rate-limit file: .*replaced`), 5*time.Second)
		if n, q := s.counter(t, "127.0.0.1", "connections"); n != 1 || q != 100 {
			t.Errorf("%s: after replacement %d of %d, want 1 of 100", name, n, q)
		}
		uid, _, _ := fileOwner(t, path)
		if uid != s.uid {
			t.Errorf("%s: the new file belongs to %d, want %d", name, uid, s.uid)
		}
	}
}
