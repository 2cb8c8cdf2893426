package ops

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// TestMakeRun is the newcomer's first five minutes, from a fresh copy of
// the tree: `make run` with no MTA on port 25 starts the bundled test MTA,
// scans with the clamd it finds, says when it is ready and how to try it;
// a test message lands in run/mail/, the EICAR test is refused, and a start
// and a stop print no warning.
func TestMakeRun(t *testing.T) {
	clamd := harness.Clamd(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	if greetsOn("127.0.0.1:25") {
		t.Skip("an MTA answers on 127.0.0.1:25: make run would use it")
	}
	waitFree(t, "127.0.0.1:9199")
	tree := freshTree(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "run", "CLAMD_SOCKETS=/nonexistent/clamd.ctl "+clamd.Socket)
	cmd.Dir = tree
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		out bytes.Buffer
	)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.HasPrefix(sc.Text(), "  (swaks is in") {
				close(ready)
			}
		}
	}()
	output := func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) // Ctrl-C: the whole group
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("make run did not stop on Ctrl-C within 30 s")
		}
		pw.Close()
	}
	defer stop()
	select {
	case <-ready:
	case <-time.After(4 * time.Minute):
		t.Fatalf("make run not ready after 4 minutes; it printed:\n%s", output())
	}
	for _, want := range []string{
		"no MTA answers on 127.0.0.1:25: the bundled test MTA listens on",
		"clamd answers on " + clamd.Socket,
		"smtp-gated is ready on 127.0.0.1:9199",
		"swaks --server 127.0.0.1:9199 --to you@example.org\n",
		"EICAR-STANDARD-ANTIVIRUS-TEST-FILE",
	} {
		if !strings.Contains(output(), want) {
			t.Errorf("make run did not print %q; it printed:\n%s", want, output())
		}
	}

	mail := filepath.Join(tree, "run", "mail")
	c := harness.Dial(t, "127.0.0.1:9199")
	c.Expect(220)
	c.Ehlo("newcomer.example")
	c.Cmd("MAIL FROM:<me@example.org>", 250)
	c.Cmd("RCPT TO:<you@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send("Subject: first try\r\n\r\nmake-run-token\r\n.\r\n")
	c.Expect(250)
	c.Cmd("MAIL FROM:<me@example.org>", 250)
	c.Cmd("RCPT TO:<you@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send("Subject: eicar\r\n\r\n" + string(harness.EICAR()) + "\r\n.\r\n")
	if code, text, err := c.Reply(); err != nil || code < 500 {
		t.Errorf("EICAR test answered %d %q (%v), want a refusal", code, text, err)
	}
	c.Close()

	files, _ := filepath.Glob(filepath.Join(mail, "*.eml"))
	if len(files) != 1 {
		t.Fatalf("run/mail holds %d messages, want the test message only", len(files))
	}
	if b, _ := os.ReadFile(files[0]); !bytes.Contains(b, []byte("make-run-token")) || !bytes.Contains(b, []byte("Delivered-To: you@example.org")) {
		t.Errorf("run/mail holds:\n%s", b)
	}

	stop()
	log := output()
	if !strings.Contains(log, "master: stopped") {
		t.Errorf("no clean stop; make run printed:\n%s", log)
	}
	if bad := regexp.MustCompile(`(?m)^.*(warning|err|crit|alert|emerg): .*$`).FindAllString(log, -1); len(bad) > 0 {
		t.Errorf("a clean start and stop printed:\n%s", strings.Join(bad, "\n"))
	}
}

// freshTree copies the files git knows of (tracked, and new ones not
// ignored) into a new directory: the tree as a fresh clone of it would be.
func freshTree(t *testing.T) string {
	t.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	src := strings.TrimSpace(string(root))
	list, err := exec.Command("git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatal(err)
	}
	dst := harness.DaemonDir(t, "sgmr-")
	for _, name := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		from := filepath.Join(src, name)
		fi, err := os.Lstat(from)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the work tree, or not a file
		}
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		to := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// greetsOn reports whether something accepts connections on addr.
func greetsOn(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// waitFree waits until nothing listens on addr (make run's fixed port).
func waitFree(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for greetsOn(addr) {
		if time.Now().After(deadline) {
			t.Fatalf("%s stays in use: make run cannot listen there", addr)
		}
		time.Sleep(time.Second)
	}
}
