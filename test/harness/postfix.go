package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// PostfixServer is a running private Postfix (test/peers/postfix.sh): it
// accepts any recipient and delivers every message into one Maildir, except
// reject@... (550 5.1.1 at RCPT), tempfail@... (450 4.2.0 at RCPT) and
// ...@discard.invalid (accepted, discarded). It offers PIPELINING, SIZE
// 52428800, STARTTLS (self-signed, CACert), AUTH PLAIN LOGIN (User/Pass),
// XCLIENT and XFORWARD from loopback, 8BITMIME, SMTPUTF8, CHUNKING.
type PostfixServer struct {
	Addr      string        // "127.0.0.1:PORT"
	Addr6     string        // "[::1]:PORT" when the machine has IPv6 loopback, else ""
	Port      int           // PORT
	Dir       string        // instance directory: etc/, queue/, maillog, tls/, maildir/
	Maildir   string        // the catch-all Maildir; delivered messages are files in Maildir/new
	CACert    string        // PEM certificate Postfix offers with STARTTLS (self-signed)
	User      string        // SASL user name: testuser@peers.localdomain
	Pass      string        // SASL password: testpass
	MasterPid int           // pid of the Postfix master process
	StartTime time.Duration // how long postfix.sh start took

	stopOnce sync.Once
	stopErr  error
}

const (
	postfixUser = "testuser@peers.localdomain"
	postfixPass = "testpass"
	pfDirPrefix = "smtpgated-postfix-"
)

var (
	sharedPostfix    sharedPeer[*PostfixServer]
	postfixStaleOnce sync.Once
)

// Postfix returns the test binary's shared Postfix, starting it on first use
// (stopped by Main when the tests are done). Tests share it: tell your
// messages apart with Token. It skips the test when not root or when Postfix
// is not installed, unless SMTPGATED_REQUIRE_PEERS=1, which makes that a
// failure.
func Postfix(t testing.TB) *PostfixServer {
	t.Helper()
	postfixAvailable(t)
	requireMain(t, "Postfix")
	return sharedPostfix.get(t, "Postfix", startPostfix, func(srv *PostfixServer) string {
		return fmt.Sprintf("on %s started in %v (dir %s)", srv.Addr, srv.StartTime.Round(time.Millisecond), srv.Dir)
	})
}

// NewPostfix starts a private Postfix for this test only (stopped by
// t.Cleanup): for a test that needs a second MTA, or stops or breaks its MTA.
// Skips like Postfix.
func NewPostfix(t testing.TB) *PostfixServer {
	t.Helper()
	postfixAvailable(t)
	requireMain(t, "NewPostfix")
	return newPeer(t, "Postfix", startPostfix, (*PostfixServer).Stop)
}

func postfixAvailable(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "Postfix needs root (its master, sasldb and Maildir ownership)")
	}
	var missing []string
	for _, tool := range []string{"postfix", "saslpasswd2", "openssl"} {
		if _, err := lookSbin(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		skipOrFail(t, "Postfix peer unavailable, missing "+strings.Join(missing, ", ")+": run test/install-deps.sh")
	}
}

// lookSbin is exec.LookPath that also looks in the sbin directories, which
// are not in every user's PATH.
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func postfixScript() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "test", "peers", "postfix.sh"), nil
}

func runScript(timeout time.Duration, args ...string) (string, error) {
	script, err := postfixScript()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Stdin = nil // /dev/null
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	if err != nil {
		return string(out), fmt.Errorf("postfix.sh %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

var masterRe = regexp.MustCompile(`\bready \S+ master=(\d+)`)

// startPostfix starts an instance in a new directory under os.TempDir().
func startPostfix() (*PostfixServer, error) {
	postfixStaleOnce.Do(stopStalePostfixes)
	dir, err := os.MkdirTemp("", pfDirPrefix)
	if err != nil {
		return nil, err
	}
	// postfix and nobody must traverse it; MkdirTemp makes it 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	// The owner file lets a later test binary stop this instance if this one
	// dies without running Main's teardown.
	self, err := readProcStat(os.Getpid())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), fmt.Appendf(nil, "%d %d\n", self.pid, self.start), 0o644); err != nil {
		return nil, err
	}
	srv := &PostfixServer{
		Dir:     dir,
		Maildir: filepath.Join(dir, "maildir", "sink"),
		CACert:  filepath.Join(dir, "tls", "cert.pem"),
		User:    postfixUser,
		Pass:    postfixPass,
	}
	// Registered before the start: a SIGINT during the start must still stop
	// what it starts, so the teardown waits for the start to finish.
	done, err := beginStart(func() {
		if err := srv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		}
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer done()
	var out string
	var port int
	t0 := time.Now()
	for attempt := 1; ; attempt++ {
		if port, err = freePort(true); err != nil {
			break
		}
		out, err = runScript(60*time.Second, "start", dir, strconv.Itoa(port))
		// Another process may grab the port between freePort and postfix's bind.
		if err == nil || attempt == 3 || !strings.Contains(out, "in use") {
			break
		}
	}
	if err != nil {
		srv.Stop() // whatever half-started
		return nil, err
	}
	srv.StartTime = time.Since(t0)
	srv.Port = port
	srv.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	if HasIPv6Loopback() {
		srv.Addr6 = fmt.Sprintf("[::1]:%d", port)
	}
	if m := masterRe.FindStringSubmatch(out); m != nil {
		srv.MasterPid, _ = strconv.Atoi(m[1])
	}
	return srv, nil
}

// Stop stops the instance (waiting until its processes are gone and its port
// is free) and removes its directory. Safe to call more than once. The shared
// instance is stopped by Main; do not stop it from a test.
func (p *PostfixServer) Stop() error {
	p.stopOnce.Do(func() {
		// no PORT: the script reads DIR/port (absent if the start failed early)
		_, p.stopErr = runScript(60*time.Second, "stop", p.Dir)
		if p.stopErr == nil {
			p.stopErr = os.RemoveAll(p.Dir)
		}
	})
	return p.stopErr
}

// stopStalePostfixes stops the instances left by test binaries that died
// without tearing down (their owner process is gone).
func stopStalePostfixes() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), pfDirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			// no owner file: only a directory from a crash during MkdirTemp
			if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < 2*time.Minute {
				continue
			}
		} else {
			var pid int
			var start uint64
			if _, err := fmt.Sscan(string(b), &pid, &start); err == nil && pidAlive(pid, start) {
				continue // its test binary is still running
			}
		}
		fmt.Fprintf(os.Stderr, "harness: stopping a Postfix left behind by a dead test binary: %s\n", dir)
		if _, err := runScript(60*time.Second, "stop", dir); err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
			continue
		}
		os.RemoveAll(dir)
	}
}

// WaitDelivered waits until a message containing token is in the Maildir and
// returns its path; it fails the test after timeout, showing the end of the
// maillog. Maildir delivery writes into tmp/ and renames into new/, so a file
// found in new/ is complete. There is no other signal than the file itself:
// new/ is polled every 10 ms.
func (p *PostfixServer) WaitDelivered(t testing.TB, token string, timeout time.Duration) string {
	t.Helper()
	path, ok := p.pollFor(token, timeout)
	if !ok {
		t.Fatalf("no message containing %q delivered to %s within %v; maillog tail:\n%s",
			token, p.Maildir, timeout, tail(p.Log(), 30))
	}
	return path
}

// NotDelivered checks, for the whole duration d, that no message containing
// token reaches the Maildir; it fails the test as soon as one does.
func (p *PostfixServer) NotDelivered(t testing.TB, token string, d time.Duration) {
	t.Helper()
	if path, ok := p.pollFor(token, d); ok {
		t.Fatalf("a message containing %q was delivered (%s), want none", token, path)
	}
}

func (p *PostfixServer) pollFor(token string, timeout time.Duration) (string, bool) {
	seen := map[string]bool{} // files already read in this call (they do not change)
	tok := []byte(token)
	newDir := filepath.Join(p.Maildir, "new")
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := os.ReadDir(newDir)
		for _, e := range ents {
			if seen[e.Name()] {
				continue
			}
			path := filepath.Join(newDir, e.Name())
			b, err := os.ReadFile(path)
			if err != nil {
				continue // moved away meanwhile
			}
			seen[e.Name()] = true
			if bytes.Contains(b, tok) {
				return path, true
			}
		}
		if time.Now().After(deadline) {
			return "", false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Messages returns the paths of the delivered messages (Maildir/new), oldest
// first.
func (p *PostfixServer) Messages() []string {
	newDir := filepath.Join(p.Maildir, "new")
	ents, _ := os.ReadDir(newDir)
	type msg struct {
		path string
		mod  time.Time
	}
	var ms []msg
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		ms = append(ms, msg{filepath.Join(newDir, e.Name()), fi.ModTime()})
	}
	sort.Slice(ms, func(i, j int) bool {
		if !ms[i].mod.Equal(ms[j].mod) {
			return ms[i].mod.Before(ms[j].mod)
		}
		return ms[i].path < ms[j].path
	})
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.path
	}
	return out
}

// Log returns Postfix's maillog so far.
func (p *PostfixServer) Log() string {
	b, err := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
