package harness

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ClamdServer is a running private clamd (test/peers/clamd.sh) with an
// offline database the script writes: EICAR (anywhere in a file, and as
// the exact 68-byte file) and the marker string ClamdMarker. Names from a
// custom database end in ".UNOFFICIAL": never compare them literally.
// clamd runs as user clamav and cannot read a root-only file by path.
type ClamdServer struct {
	Socket    string        // unix socket (mode 666): antivirus_path for FILDES
	Addr      string        // "127.0.0.1:PORT": antivirus_path for INSTREAM
	Port      int           // PORT
	Dir       string        // instance directory: clamd.conf, db/, clamd.log
	StartTime time.Duration // how long the first clamd.sh start took

	inst *peerInstance
}

// SpamdServer is a running private spamd (test/peers/spamd.sh): stock
// rules, no network tests, -L. GTUBE scores 1000 and more; an ordinary
// message a few points. spamd's own required_score is 5.0.
type SpamdServer struct {
	Socket    string        // unix socket (mode 666): antispam_path
	Addr      string        // "127.0.0.1:PORT": antispam_path over TCP
	Port      int           // PORT
	Dir       string        // instance directory: site/, home/, spamd.log
	StartTime time.Duration // how long the first spamd.sh start took

	inst *peerInstance
}

// ClamdMarker is a second signature of the test database: a message
// containing it is a virus with another name than EICAR's.
const ClamdMarker = "SMTPGATED-TEST-MALWARE-MARKER-0001"

// GTUBE is SpamAssassin's Generic Test for Unsolicited Bulk Email: a
// message carrying it scores 1000 or more.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// eicarB64 is the EICAR test file, base64-encoded so that no file of the
// repository (nor a checkout scanned by an antivirus) carries it literally.
const eicarB64 = "WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo="

// EICAR returns the 68-byte EICAR anti-virus test file.
func EICAR() []byte {
	b, err := base64.StdEncoding.DecodeString(eicarB64)
	if err != nil {
		panic(err)
	}
	return b
}

// VirusMessage returns a MIME message from → to with token in its subject
// and body, and EICAR as a base64 attachment (clamd finds it only by
// decoding the MIME part).
func VirusMessage(from, to, token string) []byte {
	att := base64.StdEncoding.EncodeToString(EICAR())
	return fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: virus %s\r\nMessage-ID: <%s@test.invalid>\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b-%s\"\r\n\r\n"+
		"--b-%s\r\nContent-Type: text/plain\r\n\r\nbody of %s\r\n"+
		"--b-%s\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\n"+
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"eicar.com\"\r\n\r\n%s\r\n"+
		"--b-%s--\r\n",
		from, to, token, token, token, token, token, token, att, token)
}

// SpamMessage returns a message from → to with token in its subject and
// GTUBE in its body.
func SpamMessage(from, to, token string) []byte {
	return fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: spam %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\n"+
		"body of %s\r\n%s\r\n", from, to, token, token, token, GTUBE)
}

var (
	sharedClamd       sharedPeer[*ClamdServer]
	sharedSpamd       sharedPeer[*SpamdServer]
	scannersStaleOnce sync.Once
)

// Clamd returns the test binary's shared clamd, starting it on first use
// (stopped by Main when the tests are done). Do not stop it: a test that
// stops or restarts clamd uses NewClamd. Skips the test when not root or
// clamd is not installed, unless SMTPGATED_REQUIRE_PEERS=1, which makes
// that a failure.
func Clamd(t testing.TB) *ClamdServer {
	t.Helper()
	clamdAvailable(t)
	requireMain(t, "Clamd")
	return sharedClamd.get(t, "clamd", startClamd, func(c *ClamdServer) string {
		return fmt.Sprintf("on %s and %s started in %v", c.Socket, c.Addr, c.StartTime.Round(time.Millisecond))
	})
}

// NewClamd starts a private clamd for this test only (stopped and removed
// by t.Cleanup): for a test that stops, restarts or breaks it. Skips like
// Clamd.
func NewClamd(t testing.TB) *ClamdServer {
	t.Helper()
	clamdAvailable(t)
	requireMain(t, "NewClamd")
	return newPeer(t, "clamd", startClamd, func(c *ClamdServer) error { return c.inst.remove() })
}

// Spamd returns the test binary's shared spamd, starting it on first use
// (stopped by Main). Do not stop it: use NewSpamd. Skips like Clamd.
func Spamd(t testing.TB) *SpamdServer {
	t.Helper()
	spamdAvailable(t)
	requireMain(t, "Spamd")
	return sharedSpamd.get(t, "spamd", startSpamd, func(s *SpamdServer) string {
		return fmt.Sprintf("on %s and %s started in %v", s.Socket, s.Addr, s.StartTime.Round(time.Millisecond))
	})
}

// NewSpamd starts a private spamd for this test only (stopped and removed
// by t.Cleanup). Skips like Spamd.
func NewSpamd(t testing.TB) *SpamdServer {
	t.Helper()
	spamdAvailable(t)
	requireMain(t, "NewSpamd")
	return newPeer(t, "spamd", startSpamd, func(s *SpamdServer) error { return s.inst.remove() })
}

// Stop stops clamd (waiting until the process is gone and its socket
// removed); the directory and database stay, for Start. Safe to call when
// already stopped.
func (c *ClamdServer) Stop() error { return c.inst.stop() }

// Start starts a stopped clamd again, on the same socket and port.
func (c *ClamdServer) Start() error { return c.inst.start() }

// Pid returns clamd's pid, 0 when it is not running.
func (c *ClamdServer) Pid() int { return c.inst.pid("clamd.pid") }

// Log returns clamd's log so far.
func (c *ClamdServer) Log() string { return c.inst.log("clamd.log") }

// Stop stops spamd and its children; the directory stays, for Start.
func (s *SpamdServer) Stop() error { return s.inst.stop() }

// Start starts a stopped spamd again, on the same socket and port.
func (s *SpamdServer) Start() error { return s.inst.start() }

// Pid returns the spamd parent's pid, 0 when it is not running.
func (s *SpamdServer) Pid() int { return s.inst.pid("spamd.pid") }

// Log returns spamd's log so far.
func (s *SpamdServer) Log() string { return s.inst.log("spamd.log") }

func clamdAvailable(t testing.TB) {
	t.Helper()
	peerAvailable(t, "clamd", []string{"clamd", "perl", "ss"}, "clamav", "clamav-daemon")
}

func spamdAvailable(t testing.TB) {
	t.Helper()
	peerAvailable(t, "spamd", []string{"spamd", "perl", "ss"}, "debian-spamd", "spamd, spamassassin")
	if m, _ := filepath.Glob("/etc/spamassassin/*.pre"); len(m) == 0 {
		skipOrFail(t, "spamd peer unavailable: no /etc/spamassassin/*.pre (spamassassin): run test/install-deps.sh")
	}
}

func peerAvailable(t testing.TB, what string, tools []string, account, pkgs string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, what+" needs root (it changes to user "+account+")")
	}
	var missing []string
	for _, tool := range tools {
		if _, err := lookSbin(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := user.Lookup(account); err != nil {
		missing = append(missing, "user "+account)
	}
	if len(missing) > 0 {
		skipOrFail(t, fmt.Sprintf("%s peer unavailable, missing %s (%s): run test/install-deps.sh", what, strings.Join(missing, ", "), pkgs))
	}
}

func startClamd() (*ClamdServer, error) {
	inst, err := startPeer("clamd.sh", "sgd-clamd-")
	if err != nil {
		return nil, err
	}
	return &ClamdServer{
		Socket:    filepath.Join(inst.dir, "clamd.sock"),
		Addr:      fmt.Sprintf("127.0.0.1:%d", inst.port),
		Port:      inst.port,
		Dir:       inst.dir,
		StartTime: inst.startTime,
		inst:      inst,
	}, nil
}

func startSpamd() (*SpamdServer, error) {
	inst, err := startPeer("spamd.sh", "sgd-spamd-")
	if err != nil {
		return nil, err
	}
	return &SpamdServer{
		Socket:    filepath.Join(inst.dir, "spamd.sock"),
		Addr:      fmt.Sprintf("127.0.0.1:%d", inst.port),
		Port:      inst.port,
		Dir:       inst.dir,
		StartTime: inst.startTime,
		inst:      inst,
	}, nil
}

// peerInstance is one daemon run by a test/peers script (SCRIPT start DIR
// PORT, SCRIPT stop DIR) in a directory of its own under os.TempDir(). The
// directory name is short: it holds unix sockets (108-byte paths).
type peerInstance struct {
	script    string
	dir       string
	port      int
	startTime time.Duration

	mu      sync.Mutex
	removed bool
}

// startPeer makes a directory with the given prefix and starts the
// script's daemon in it on a free port. Main's teardown removes it.
func startPeer(script, prefix string) (*peerInstance, error) {
	scannersStaleOnce.Do(func() {
		stopStalePeers("clamd.sh", "sgd-clamd-")
		stopStalePeers("spamd.sh", "sgd-spamd-")
	})
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// The owner file lets a later test binary stop this instance if this
	// one dies without running Main's teardown.
	self, err := readProcStat(os.Getpid())
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), fmt.Appendf(nil, "%d %d\n", self.pid, self.start), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := &peerInstance{script: script, dir: dir}
	// Registered before the start: a SIGINT during the start still stops
	// what it starts.
	done, err := beginStart(func() {
		if err := p.remove(); err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
		}
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer done()
	t0 := time.Now()
	for attempt := 1; ; attempt++ {
		if p.port, err = freePort(false); err != nil {
			break
		}
		var out string
		out, err = runPeerScript(script, 150*time.Second, "start", dir, strconv.Itoa(p.port))
		// Another process may take the port between freePort and the bind.
		if err == nil || attempt == 3 || !strings.Contains(out, "in use") {
			break
		}
	}
	if err != nil {
		p.remove()
		return nil, err
	}
	p.startTime = time.Since(t0)
	return p, nil
}

func (p *peerInstance) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return fmt.Errorf("%s %s: already removed", p.script, p.dir)
	}
	_, err := runPeerScript(p.script, 150*time.Second, "start", p.dir, strconv.Itoa(p.port))
	return err
}

func (p *peerInstance) stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return nil
	}
	_, err := runPeerScript(p.script, 60*time.Second, "stop", p.dir)
	return err
}

// remove stops the daemon and removes its directory. Safe to call more
// than once.
func (p *peerInstance) remove() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.removed {
		return nil
	}
	if _, err := runPeerScript(p.script, 60*time.Second, "stop", p.dir); err != nil {
		return err
	}
	p.removed = true
	return os.RemoveAll(p.dir)
}

func (p *peerInstance) pid(file string) int {
	b, err := os.ReadFile(filepath.Join(p.dir, file))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !pidAlive(pid, 0) {
		return 0
	}
	return pid
}

func (p *peerInstance) log(file string) string {
	b, err := os.ReadFile(filepath.Join(p.dir, file))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

// runPeerScript runs test/peers/SCRIPT ARGS... and returns its output.
func runPeerScript(script string, timeout time.Duration, args ...string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(root, "test", "peers", script)}, args...)...)
	cmd.Stdin = nil // /dev/null
	// The daemons the scripts start write into their own files; should one
	// keep the output pipe anyway, do not wait for it past the kill.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v", timeout)
	}
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", script, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// stopStalePeers stops the instances of script left by test binaries that
// died without tearing down (their owner process is gone).
func stopStalePeers(script, prefix string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
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
		fmt.Fprintf(os.Stderr, "harness: stopping a %s instance left behind by a dead test binary: %s\n", strings.TrimSuffix(script, ".sh"), dir)
		if _, err := runPeerScript(script, 60*time.Second, "stop", dir); err != nil {
			fmt.Fprintf(os.Stderr, "harness: %v\n", err)
			continue
		}
		os.RemoveAll(dir)
	}
}
