//go:build linux

package ops

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/test/harness"
)

// envFlood makes the test binary a flooder of the control socket it names
// (TestCtlFloodHelper), run as another user by TestCtlFlood.
const envFlood = "SMTPGATED_CTLFLOOD_SOCKET"

const floodConns = 5000

// TestCtlFloodHelper is the flooder: it opens floodConns idle
// connections to the control socket, says "ready", then keeps the number
// up by replacing the oldest connection with a new one every millisecond,
// until its standard input ends.
func TestCtlFloodHelper(t *testing.T) {
	sock := os.Getenv(envFlood)
	if sock == "" {
		t.Skip("run by TestCtlFlood")
	}
	var rl syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	rl.Cur = rl.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	dial := func() net.Conn {
		for deadline := time.Now().Add(10 * time.Second); ; {
			c, err := net.DialTimeout("unixpacket", sock, 10*time.Second)
			if err == nil {
				return c
			}
			// A full backlog: the daemon has not caught up.
			if !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
				fmt.Printf("dial: %v\n", err)
				os.Exit(1)
			}
			time.Sleep(time.Millisecond)
		}
	}
	conns := make([]net.Conn, 0, floodConns)
	for range floodConns {
		conns = append(conns, dial())
	}
	fmt.Printf("ready uid %d\n", os.Getuid())
	for i := 0; ; i = (i + 1) % floodConns {
		select {
		case <-stop:
			return
		case <-time.After(time.Millisecond):
		}
		conns[i].Close()
		conns[i] = dial()
	}
}

// fds counts the descriptors of pid.
func fds(t *testing.T, pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Errorf("descriptors of %d: %v", pid, err)
	}
	return len(ents)
}

// 5,000 idle control connections from an unprivileged user, renewed as
// master drops them: root's `smtpgatectl status` answers within a second
// during the flood and after it, the flooder is refused with a message,
// and master's descriptors stay bounded.
func TestCtlFlood(t *testing.T) {
	needRoot(t)
	s := newSetup(t)
	d := s.start(t)
	base := fds(t, d.Pid())
	harness.CtlBinary(t) // built now, not while a command is timed
	// A smtpgatectl built with -race (SMTPGATED_BUILDFLAGS) would sleep
	// 1 s at exit, which is not the daemon's time.
	t.Setenv("GORACE", "atexit_sleep_ms=0")

	// The test binary, where the unprivileged user can run it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	flooder := filepath.Join(s.dir, "flooder")
	if err := os.WriteFile(flooder, b, 0o755); err != nil {
		t.Fatal(err)
	}

	// master's descriptor count, sampled until the end of the test.
	var mu sync.Mutex
	peak := base
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
			n := fds(t, d.Pid())
			mu.Lock()
			peak = max(peak, n)
			mu.Unlock()
		}
	}()
	defer func() {
		select {
		case <-sampling:
		default:
			close(sampling)
		}
		<-sampled
	}()

	cmd := exec.Command(flooder, "-test.run=^TestCtlFloodHelper$", "-test.v")
	cmd.Env = append(os.Environ(), envFlood+"="+s.sock())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	lines := bufio.NewScanner(stdout)
	ready := make(chan string, 1)
	go func() {
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), "ready") || strings.HasPrefix(lines.Text(), "dial") {
				ready <- lines.Text()
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-ready:
		if l != "ready uid 65534" {
			t.Fatalf("flooder: %q", l)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("flooder did not open %d connections in 60 s", floodConns)
	}

	status := func(when string) {
		t.Helper()
		start := time.Now()
		r := s.ctl(t, nil, "status")
		took := time.Since(start)
		t.Logf("status %s: %v", when, took.Round(time.Millisecond))
		if r.code != 0 || !strings.Contains(r.stdout, "pid "+strconv.Itoa(d.Pid())) {
			t.Errorf("status %s: %v", when, r)
		}
		if took > time.Second {
			t.Errorf("status %s took %v, want at most 1 s", when, took)
		}
	}
	for i := range 5 {
		status(fmt.Sprintf("during the flood (%d)", i+1))
		// The unprivileged user is refused while its own connections
		// hold the ordinary slots, with the daemon's one line.
		r := s.ctl(t, nobody, "status")
		if r.code != 0 && (r.code != 3 || r.stderr != "smtp-gated: too many control connections open; try again later\n") {
			t.Errorf("status as nobody during the flood: %v", r)
		}
		if r.code == 3 {
			t.Logf("status as nobody refused: %q", r.stderr)
		}
		time.Sleep(500 * time.Millisecond) // spread over the flood
	}
	refused := 0
	for range 20 {
		if r := s.ctl(t, nobody, "status"); r.code == 3 {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("status as nobody never refused during the flood")
	}

	stdin.Close()
	cmd.Wait()
	status("after the flood")
	close(sampling)
	<-sampled
	mu.Lock()
	defer mu.Unlock()
	t.Logf("master descriptors: %d before, %d at most during the flood, %d after", base, peak, fds(t, d.Pid()))
	// The served connections, with some slack for what master opens
	// meanwhile (the refused ones are closed at once).
	if bound := base + ctlBound; peak > bound {
		t.Errorf("master held %d descriptors, want at most %d", peak, bound)
	}
}

// ctlBound is how many descriptors master may add under a control flood:
// 16 + 4 served connections, and slack.
const ctlBound = 32

// An accept error on the control socket (master out of descriptors) is
// retried: once descriptors are free again, the command that waited is
// answered, and so are the next ones.
func TestCtlAcceptErrors(t *testing.T) {
	needRoot(t)
	s := newSetup(t)
	d := s.start(t)
	harness.CtlBinary(t)
	pid := d.Pid()

	// The lowest free descriptor number becomes the limit: master's next
	// accept fails with EMFILE.
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	open := map[int]bool{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		open[n] = true
	}
	free := 0
	for open[free] {
		free++
	}
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(free), Max: old.Max}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
				t.Errorf("prlimit: %v", err)
			}
		}
	}
	defer restore()

	m := d.Mark()
	answer := make(chan result, 1)
	go func() { answer <- s.ctl(t, nil, "status") }()
	d.WaitLogAfter(t, m, regexp.MustCompile(`control socket: .*too many open files`), 10*time.Second)
	select {
	case r := <-answer:
		t.Fatalf("status answered while master had no descriptor free: %v", r)
	case <-time.After(300 * time.Millisecond):
	}
	restore()
	select {
	case r := <-answer:
		if r.code != 0 {
			t.Errorf("status after the accept errors: %v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("status not answered 5 s after master's descriptors were freed")
	}
	if r := s.ctl(t, nobody, "status"); r.code != 0 {
		t.Errorf("status, next: %v", r)
	}
}
