package lockd

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// lockd killed with SIGKILL under load: master restarts it; while it is
// away sessions get a 4xx at once (no hang, no pass); no lock and no
// acknowledged count is lost; and a message whose final dot comes while
// lockd is away gets a 451, not the MTA's 250.
func TestLockdKilled(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "lock_on virus", "lock_duration 3600", "ratelimit_period 3600", "ratelimit_connections 1000000",
		"msg_temp_unavail try later")
	s.mustCtl(t, "lock", "127.0.0.9", "forever", "before the kill")

	// A session waits with its message, the final dot held back.
	c := harness.DialFrom(t, "127.0.0.5", s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	token := harness.Token(t)
	body := harness.DotStuff(harness.Message("a@example.com", "b@example.org", token))
	c.Send(string(body[:len(body)-3]))

	// Load: sessions from 127.0.0.1 one after another on 8 goroutines.
	var (
		stop               atomic.Bool
		mu                 sync.Mutex
		codes              = map[int]int{}
		slowest            time.Duration
		wg                 sync.WaitGroup
		served, tempFailed atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				start := time.Now()
				conn, err := net.DialTimeout("tcp", s.addr(), 5*time.Second)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				cl := harness.FromConn(t, conn)
				code, _, err := cl.Reply()
				if err != nil {
					code = -1 // no reply within 10 s, or none at all
				}
				if code == 220 {
					served.Add(1)
					send(cl, "QUIT")
				} else if code == 421 {
					tempFailed.Add(1)
				}
				conn.Close()
				mu.Lock()
				codes[code]++
				slowest = max(slowest, time.Since(start))
				mu.Unlock()
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	pid := lockdPid(t, d)
	mark := d.Mark()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The held dot, while lockd is away.
	c.Send(".\r\n")
	code, text, err := c.Reply()
	if err != nil || code != 451 {
		t.Errorf("final dot with lockd killed: %d %q %v, want 451", code, text, err)
	}
	c.Quit()
	d.WaitLogAfter(t, mark, regexp.MustCompile(`lockd restarted \(pid \d+\)`), 15*time.Second)
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	t.Logf("sessions by greeting: %v; slowest %v", codes, slowest)
	if codes[220] == 0 || codes[421] == 0 || len(codes) != 2 {
		t.Errorf("greetings by code %v: want 220 and 421 (while lockd was away) and nothing else", codes)
	}
	if slowest > lockdWait {
		t.Errorf("a session waited %v for its greeting", slowest)
	}
	if npid := lockdPid(t, d); npid == pid {
		t.Error("lockd was not restarted")
	}
	// No count lost: every session served was counted; a session whose
	// count was written as lockd died may have been counted and refused.
	n, _ := s.counter(t, "127.0.0.1", "connections")
	if int64(n) < served.Load() || int64(n) > served.Load()+tempFailed.Load() {
		t.Errorf("connections counted %d, served %d, refused for lockd's absence %d", n, served.Load(), tempFailed.Load())
	}
	// No lock lost.
	if code, _, _ := greeting(t, "127.0.0.9", s.addr()); code != 554 {
		t.Errorf("a client locked before the kill: %d, want 554", code)
	}
	if _, err := os.Stat(filepath.Join(s.lockDir(), "127.0.0.9")); err != nil {
		t.Error(err)
	}
	s.pf.NotDelivered(t, token, 2*time.Second)
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=lockd, .*src=127\.0\.0\.5,`), 5*time.Second)
	if n := len(regexp.MustCompile(`CLOSE by=lockd, `).FindAllString(d.Log(), -1)); n != int(tempFailed.Load())+1 {
		t.Errorf("%d CLOSE by=lockd lines, want %d", n, tempFailed.Load()+1)
	}
}

// lockdWait bounds a greeting while lockd is killed: the link's end is
// seen at once, so far less than the session's bound on a call to lockd.
const lockdWait = 3 * time.Second

// lockd stopped (SIGSTOP) rather than killed: sessions wait at most the
// bound of a call to lockd, then get their 421.
func TestLockdStopped(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "lock_on virus", "lock_duration 3600")
	pid := lockdPid(t, d)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	start := time.Now()
	code, text, _ := greeting(t, "127.0.0.1", s.addr())
	took := time.Since(start)
	if code != 421 || took > 8*time.Second {
		t.Fatalf("with lockd stopped: %d %q after %v, want 421 within the bound", code, text, took)
	}
	t.Logf("421 after %v", took)
	syscall.Kill(pid, syscall.SIGCONT)
	code, text, c := greeting(t, "127.0.0.1", s.addr())
	if code != 220 {
		t.Fatalf("with lockd continued: %d %q, want 220", code, text)
	}
	c.Quit()
}
