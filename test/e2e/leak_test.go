package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/test/harness"
	"smtp-gated/test/sinkmta"
)

// fdCount is the number of open descriptors of pid: sockets, and others.
func fdCount(t *testing.T, pid int) (sockets, others int) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if l, _ := os.Readlink(dir + "/" + e.Name()); strings.HasPrefix(l, "socket:") {
			sockets++
		} else {
			others++
		}
	}
	return sockets, others
}

// 10,000 sessions, ended every which way, leave no descriptor behind in
// master or in the session workers.
func TestNoDescriptorLeak(t *testing.T) {
	sink, err := sinkmta.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	_, sport, _ := net.SplitHostPort(sink.Addr())
	dir := harness.DaemonDir(t, "sge-")
	s := &setup{dir: dir, port: harness.FreePort(t)}
	cfg := harness.FixedConfig(sport, s.port, s.dir) + `session_workers 2
max_per_host 1000
max_connections 1000
log_level notice
`
	d := harness.StartDaemon(t, cfg)
	pids := append([]int{d.Pid()}, children(t, d)["session"]...)
	count := func() map[int][2]int {
		m := map[int][2]int{}
		for _, p := range pids {
			s, o := fdCount(t, p)
			m[p] = [2]int{s, o}
		}
		return m
	}
	session := func(i int) error {
		c, err := net.DialTimeout("tcp", s.addr(), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		r := bufio.NewReader(c)
		if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "220") {
			return fmt.Errorf("greeting %q: %v", l, err)
		}
		switch i % 3 {
		case 0: // a polite QUIT
			fmt.Fprintf(c, "QUIT\r\n")
			r.ReadString('\n')
		case 1: // the client just goes away
		case 2: // mid-command
			fmt.Fprintf(c, "EHLO x")
		}
		return nil
	}
	before := count()
	const n = 10000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	work := make(chan int)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := session(i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The last sessions end asynchronously in the workers: wait for the
	// books to balance (status says 0 open), then compare.
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := osexec.Command(harness.CtlBinary(t), "-s", s.dir+"/ctl.sock", "status").CombinedOutput()
		out := string(b)
		if strings.Contains(out, "Children: 0/") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions still open 20 s after the last client left:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Sockets must be back to what they were. Workers keep a small pool
	// of pipes for splicing (bounded by the bursts in flight at once, not
	// by the number of sessions). A socket closed while a goroutine of the
	// session still waits on it is released when that goroutine runs, which
	// a loaded machine can delay past the session's end: the counts get a
	// few seconds to come back.
	leaks := func(after map[int][2]int) []string {
		var out []string
		for _, p := range pids {
			if after[p][0] > before[p][0] || after[p][1] > before[p][1]+32 {
				out = append(out, fmt.Sprintf("pid %d (%s): %d sockets and %d other descriptors before, %d and %d after %d sessions",
					p, cmdline(p), before[p][0], before[p][1], after[p][0], after[p][1], n))
			}
		}
		return out
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		l := leaks(count())
		if len(l) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after the books balanced:\n%s", strings.Join(l, "\n"))
		}
	}
}
