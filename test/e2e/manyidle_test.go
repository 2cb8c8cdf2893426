//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
	"smtp-gated/test/sinkmta"
)

// idleSessions is how many sessions TestTenThousandIdleSessions holds.
const idleSessions = 10000

// 10,000 sessions held at once, idle after the greeting, with
// max_connections 10000 and connect_queue unset (the kernel's SOMAXCONN):
// every client is greeted, every session ends when its client leaves,
// and the daemon then serves a new session.
func TestTenThousandIdleSessions(t *testing.T) {
	if os.Getenv(envSinkProcess) != "" {
		sinkProcess()
		return
	}
	if testing.Short() {
		t.Skip("10,000 sessions: not in -short")
	}
	start := time.Now()
	// Descriptors: this process holds the clients' sockets, the MTA (a
	// process of its own) the sessions' at its end, and each session
	// worker, with its share of the sessions (as many workers as CPUs),
	// up to three a session (master's figure, master/nofile.go). The
	// daemon inherits this process's limit and can raise it no higher
	// than its hard limit unless it may raise that.
	workers := runtime.NumCPU()
	need := uint64(max(idleSessions+512, 3*((idleSessions+workers-1)/workers)+64))
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < need {
		want := syscall.Rlimit{Cur: need, Max: max(rl.Max, need)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			t.Skipf("%d sessions over %d session workers need %d descriptors a process; RLIMIT_NOFILE is %d, at most %d, "+
				"and raising the hard limit needs root with CAP_SYS_RESOURCE: %v", idleSessions, workers, need, rl.Cur, rl.Max, err)
		}
	}
	sink := startSinkProcess(t)
	sport := sink.port
	dir := harness.DaemonDir(t, "sgi-")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := harness.StartDaemon(t, harness.FixedConfig(sport, port, dir)+fmt.Sprintf(`max_connections %[1]d
max_per_host %[1]d
log_level notice
`, idleSessions))

	var (
		mu      sync.Mutex
		clients []net.Conn
	)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range clients {
			c.Close()
		}
	}()
	// greet opens one session and reads its greeting.
	greet := func() (net.Conn, error) {
		c, err := net.DialTimeout("tcp", addr, 20*time.Second)
		if err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		var b [512]byte
		var got []byte
		for !strings.Contains(string(got), "\n") {
			n, err := c.Read(b[:])
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("greeting %q: %w", got, err)
			}
			got = append(got, b[:n]...)
		}
		if !strings.HasPrefix(string(got), "220 ") {
			c.Close()
			return nil, fmt.Errorf("greeting %q", got)
		}
		return c, nil
	}
	// A few hundred clients connect at a time, each keeping every session
	// it opened.
	const dialers = 200
	errs := make(chan error, dialers)
	var wg sync.WaitGroup
	for i := range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range idleSessions/dialers + btoi(i < idleSessions%dialers) {
				c, err := greet()
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				clients = append(clients, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a client: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	greeted := time.Since(start)
	if n := sink.open(t); n != idleSessions {
		t.Errorf("the MTA holds %d sessions, want %d", n, idleSessions)
	}
	if w := len(children(t, d)["session"]); w != workers {
		t.Errorf("%d session workers, want %d (one per CPU)", w, workers)
	}
	if l := matching(d, regexp.MustCompile(`RLIMIT_NOFILE`)); len(l) > 0 {
		t.Errorf("the daemon says it is short of descriptors: %q", l)
	}
	t.Logf("%d sessions greeted and held in %v", len(clients), greeted.Round(time.Millisecond))

	// Every client leaves: every session ends, at the MTA too.
	mu.Lock()
	for _, c := range clients {
		c.Close()
	}
	clients = nil
	mu.Unlock()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n := sink.open(t)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the clients left, the MTA still holds %d sessions", n)
		}
	}
	closed := regexp.MustCompile(`CLOSE by=client,`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n := len(matching(d, closed))
		if n == idleSessions {
			break
		}
		if n > idleSessions || time.Now().After(deadline) {
			t.Fatalf("%d sessions logged their end by the client, want %d", n, idleSessions)
		}
	}

	// The daemon still serves.
	before := sink.messages(t)
	c, err := greet()
	if err != nil {
		t.Fatalf("a new session after the 10,000: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	for _, step := range []struct{ send, want string }{
		{"EHLO client.test", "250 "}, {"MAIL FROM:<a@client.test>", "250 "}, {"RCPT TO:<b@mta.test>", "250 "},
		{"DATA", "354 "}, {"Subject: after\r\n\r\nhello\r\n.", "250 "}, {"QUIT", "221 "},
	} {
		fmt.Fprintf(c, "%s\r\n", step.send)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%q: %v", step.send, err)
			}
			if len(l) >= 4 && l[3] == '-' {
				continue
			}
			if !strings.HasPrefix(l, step.want) {
				t.Fatalf("%q: %q, want %q", step.send, l, step.want)
			}
			break
		}
	}
	if got := sink.messages(t) - before; got != 1 {
		t.Errorf("the MTA got %d messages, want 1", got)
	}
	t.Logf("took %v", time.Since(start).Round(time.Millisecond))
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// envSinkProcess makes the test binary the MTA of
// TestTenThousandIdleSessions (sinkProcess).
const envSinkProcess = "SMTPGATED_TEST_SINK_PROCESS"

// sinkProcess runs the in-memory sink MTA, in a process of its own: it
// writes its address, answers "open" with the number of connections open
// and "messages" with the messages accepted, one line each, and ends
// when its standard input does.
func sinkProcess() {
	s, err := sinkmta.Start("127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(s.Addr())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "open":
			fmt.Println(s.Open())
		case "messages":
			fmt.Println(s.Messages())
		}
	}
	s.Close()
	os.Exit(0)
}

// sinkProc is the sink MTA's process, seen from the test.
type sinkProc struct {
	port string
	in   io.WriteCloser
	out  *bufio.Reader
}

// startSinkProcess starts the sink MTA in a process of its own (the test
// binary, see sinkProcess), stopped at the end of the test.
func startSinkProcess(t *testing.T) *sinkProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTenThousandIdleSessions$")
	cmd.Env = append(os.Environ(), envSinkProcess+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() {
			cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	s := &sinkProc{in: in, out: bufio.NewReader(out)}
	addr, err := s.out.ReadString('\n')
	if err != nil {
		t.Fatalf("sink MTA process: %v", err)
	}
	_, s.port, err = net.SplitHostPort(strings.TrimSpace(addr))
	if err != nil {
		t.Fatalf("sink MTA process: %q: %v", addr, err)
	}
	return s
}

// ask asks the sink process for one of its counters.
func (s *sinkProc) ask(t *testing.T, what string) int64 {
	t.Helper()
	fmt.Fprintln(s.in, what)
	l, err := s.out.ReadString('\n')
	if err != nil {
		t.Fatalf("sink MTA process: %s: %v", what, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(l), 10, 64)
	if err != nil {
		t.Fatalf("sink MTA process: %s: %q", what, l)
	}
	return n
}

func (s *sinkProc) open(t *testing.T) int64     { return s.ask(t, "open") }
func (s *sinkProc) messages(t *testing.T) int64 { return s.ask(t, "messages") }
