package e2e

import (
	"bufio"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// mailOne sends one message carrying token through the proxy at addr,
// from a goroutine of its own (no t.Fatal), and returns how long the
// greeting took. The session lasts at least hold.
func mailOne(addr, token string, hold time.Duration) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(40 * time.Second))
	r := bufio.NewReader(c)
	expect := func(code string) error {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("waiting for %s: %w", code, err)
			}
			if !strings.HasPrefix(line, code) {
				return fmt.Errorf("got %q, want %s", strings.TrimSpace(line), code)
			}
			if len(line) < 4 || line[3] != '-' {
				return nil
			}
		}
	}
	if err := expect("220"); err != nil {
		return 0, err
	}
	greeted := time.Since(start)
	time.Sleep(hold)
	for _, step := range []struct{ send, code string }{
		{"EHLO client.test\r\n", "250"},
		{"MAIL FROM:<a@example.com>\r\n", "250"},
		{"RCPT TO:<b@example.org>\r\n", "250"},
		{"DATA\r\n", "354"},
		{string(harness.Message("a@example.com", "b@example.org", token)) + ".\r\n", "250"},
		{"QUIT\r\n", "221"},
	} {
		if _, err := c.Write([]byte(step.send)); err != nil {
			return greeted, err
		}
		if err := expect(step.code); err != nil {
			return greeted, err
		}
	}
	return greeted, nil
}

// One of two session workers stopped (SIGSTOP) while clients keep
// coming: every client is served by the other worker and its message
// delivered to Postfix, those that come once the stopped worker is
// found late without waiting for it, and the stopped worker is killed
// and replaced after about 10 s.
func TestWorkerStalled(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "max_per_host 200", "max_connections 200")
	workers := children(t, d)["session"]
	if len(workers) != 2 {
		t.Fatalf("session workers %v, want 2", workers)
	}
	stopped, healthy := workers[0], workers[1]
	mark := d.Mark()
	if err := syscall.Kill(stopped, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	defer syscall.Kill(stopped, syscall.SIGCONT)
	// When the stopped worker is gone (polled: its death is not
	// signalled to the test).
	gone := make(chan time.Duration, 1)
	go func() {
		for alive(stopped) && time.Since(stoppedAt) < 60*time.Second {
			time.Sleep(20 * time.Millisecond)
		}
		gone <- time.Since(stoppedAt)
	}()

	// 30 clients, one every 200 ms, each session lasting 3 s so that
	// both workers have some: the first ones come before master can
	// know (the heartbeat is late after 2 s), and those it gives the
	// stopped worker must be given to the other when it is killed.
	const clients = 30
	type outcome struct {
		token   string
		after   time.Duration // since SIGSTOP
		greeted time.Duration
		err     error
	}
	results := make([]outcome, clients)
	var wg sync.WaitGroup
	for i := range clients {
		results[i].token = harness.Token(t)
		results[i].after = time.Since(stoppedAt)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i].greeted, results[i].err = mailOne(s.addr(), results[i].token, 3*time.Second)
		}()
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	slowest := time.Duration(0)
	for i, r := range results {
		if r.err != nil {
			t.Errorf("client %d (%v after SIGSTOP): %v", i, r.after.Round(time.Millisecond), r.err)
			continue
		}
		// Once the stopped worker is late, no client waits for it.
		if r.after > 3*time.Second && r.greeted > 3*time.Second {
			t.Errorf("client %d, %v after SIGSTOP: greeted after %v", i, r.after.Round(time.Millisecond), r.greeted)
		}
		slowest = max(slowest, r.greeted)
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, r := range results {
		s.pf.WaitDelivered(t, r.token, 30*time.Second)
	}
	t.Logf("%d clients delivered; slowest greeting %v", clients, slowest.Round(time.Millisecond))
	if n := len(matching(d, regexp.MustCompile(`\] session \d never took it: handed to session \d`))); n == 0 {
		t.Errorf("no session handed from the stopped worker to the other: the test did not load both")
	} else {
		t.Logf("%d sessions handed from the stopped worker to the other", n)
	}

	// Every session was served by the healthy worker.
	connected := regexp.MustCompile(`^smtp-gated\[(\d+)\]: debug: session \d+: \[(\d+)\] connected to`)
	served := map[string]int{}
	for _, l := range d.LogSince(mark) {
		if m := connected.FindStringSubmatch(l); m != nil {
			served[m[1]]++
		}
	}
	if served[fmt.Sprint(healthy)] != clients || len(served) != 1 {
		t.Errorf("sessions by worker pid: %v; want all %d by %d", served, clients, healthy)
	}

	// The stopped worker is killed after 10 s of silence and replaced.
	d.WaitLogAfter(t, mark, regexp.MustCompile(fmt.Sprintf(`session \d \(pid %d\) has not answered for \d+s: killing it`, stopped)), 20*time.Second)
	killedAfter := <-gone
	d.WaitLogAfter(t, mark, regexp.MustCompile(`session \d restarted \(pid \d+\)`), 10*time.Second)
	t.Logf("stopped worker gone %v after SIGSTOP", killedAfter.Round(time.Millisecond))
	if killedAfter < 8500*time.Millisecond || killedAfter > 13*time.Second {
		t.Errorf("stopped worker gone %v after SIGSTOP, want about 10 s", killedAfter)
	}
	now := children(t, d)["session"]
	if len(now) != 2 || now[0] == stopped || now[1] == stopped {
		t.Errorf("session workers after the restart: %v (stopped one %d)", now, stopped)
	}
}
