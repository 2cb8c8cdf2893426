// Package scanner_test drives the scanner process of the real smtp-gated
// binary against a private clamd and spamd: once inside the whole daemon
// (it starts, drops its privileges, reaches the scanners, stays up, follows
// a reload), and once on its own, with the test playing master and a
// session worker over the IPC catalogue (MsgScan with the spool file's
// descriptor, MsgVerdict back), which is exactly what a session worker
// does at the end of DATA.
package scanner_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// systemUser makes sure the unprivileged test user exists and returns its
// ids.
func systemUser(t *testing.T) (uid, gid int) {
	t.Helper()
	return harness.SystemUser(t, "runs the scanner process as root with set_user")
}

// procUID returns the real, effective, saved and fs uids of pid.
func procUID(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^Uid:\s*(.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no Uid in /proc/%d/status", pid)
	}
	return strings.Join(strings.Fields(string(m[1])), " ")
}

// scannerPid returns the pid of the daemon's scanner child.
func scannerPid(t *testing.T, d *harness.Daemon) int {
	t.Helper()
	for _, pid := range harness.ChildPids(d.Pid()) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		f := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(f) >= 3 && f[1] == "-child" && f[2] == ipc.RoleScanner {
			return pid
		}
	}
	t.Fatalf("no scanner child under master %d", d.Pid())
	return 0
}

// daemonConfig is a configuration for the whole daemon, with extra lines.
func daemonConfig(t *testing.T, extra ...string) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	return fmt.Sprintf(`mode fixed
fixed_server 127.0.0.1
fixed_server_port %d
bind_address 127.0.0.1
port %d
pidfile %s/smtp-gated.pid
control_socket %s/control.sock
statefile %s/state
spool_path %s
lock_path %s
ratelimit_path %s
log_level debug
session_workers 2
set_user %s
set_group %s
%s
`, harness.FreePort(t), harness.FreePort(t), dir, dir, dir, dir, dir, dir, harness.TestUser, harness.TestUser, strings.Join(extra, "\n"))
}

// The scanner process of the daemon starts with clamd and spamd configured,
// runs as set_user, reaches both scanners through their unix sockets after
// the drop, stays up, and follows a reload to other addresses.
func TestDaemonScannerProcess(t *testing.T) {
	uid, _ := systemUser(t)
	c, s := harness.Clamd(t), harness.Spamd(t)
	d := harness.StartDaemon(t, daemonConfig(t,
		"antivirus_type clamd", "antivirus_path "+c.Socket,
		"antispam_type spamassassin", "antispam_path "+s.Socket))
	d.WaitLog(t, regexp.MustCompile(`scanner: clamd at `+regexp.QuoteMeta(c.Socket)+` answers PING`), 10*time.Second)
	d.WaitLog(t, regexp.MustCompile(`scanner: spamd at `+regexp.QuoteMeta(s.Socket)+` answers PING`), 10*time.Second)
	pid := scannerPid(t, d)
	want := fmt.Sprintf("%d %d %d %d", uid, uid, uid, uid)
	if got := procUID(t, pid); got != want {
		t.Errorf("scanner (pid %d) uids %q, want %q", pid, got, want)
	}
	if root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); root != "/" {
		t.Errorf("scanner root %q, want / (it needs the scanners' sockets)", root)
	}

	// A reload to the TCP addresses: the process follows, and stays.
	cfg, err := os.ReadFile(d.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	next := strings.ReplaceAll(strings.ReplaceAll(string(cfg), c.Socket, c.Addr), s.Socket, s.Addr)
	if err := os.WriteFile(d.ConfigFile(), []byte(next), 0o644); err != nil {
		t.Fatal(err)
	}
	m := d.Mark()
	d.Reload(t)
	d.WaitLogAfter(t, m, regexp.MustCompile(`scanner: clamd at `+regexp.QuoteMeta(c.Addr)+` answers PING`), 10*time.Second)
	d.WaitLogAfter(t, m, regexp.MustCompile(`scanner: spamd at `+regexp.QuoteMeta(s.Addr)+` answers PING`), 10*time.Second)

	time.Sleep(time.Second)
	if again := scannerPid(t, d); again != pid {
		t.Errorf("scanner pid %d became %d: it was restarted", pid, again)
	}
	for _, l := range d.LogLines() {
		if strings.Contains(l, "scanner") && (strings.Contains(l, "exited") || strings.Contains(l, "crit")) {
			t.Errorf("log line %q", l)
		}
	}
}

// A scanner that is not there is reported at start, and the process stays
// up (mail will get scanner errors until it is there).
func TestDaemonScannerUnreachable(t *testing.T) {
	systemUser(t)
	harness.Clamd(t) // skips unless the peers can run
	missing := filepath.Join(t.TempDir(), "no-clamd.sock")
	d := harness.StartDaemon(t, daemonConfig(t, "antivirus_type clamd", "antivirus_path "+missing))
	d.WaitLog(t, regexp.MustCompile(`warning: scanner: clamd at `+regexp.QuoteMeta(missing)+` does not answer`), 10*time.Second)
	pid := scannerPid(t, d)
	time.Sleep(500 * time.Millisecond)
	if again := scannerPid(t, d); again != pid {
		t.Errorf("scanner pid %d became %d", pid, again)
	}
}

// scannerChild is the scanner process run on its own, the test playing
// master (the link on descriptor 3) and one session worker (a PeerLink).
type scannerChild struct {
	cmd     *exec.Cmd
	master  *ipc.Peer
	session *ipc.Peer
	out     *syncBuffer
	exited  chan struct{}
}

// startScannerChild runs `smtp-gated -child scanner` with config, says
// hello, waits for Ready and links a session worker to it.
func startScannerChild(t *testing.T, config string) *scannerChild {
	t.Helper()
	bin := harness.DaemonBinary(t)
	mine, theirs, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	sc := &scannerChild{out: &syncBuffer{}, exited: make(chan struct{})}
	sc.cmd = exec.Command(bin, "-child", ipc.RoleScanner)
	sc.cmd.ExtraFiles = []*os.File{theirs}
	sc.cmd.Stdout, sc.cmd.Stderr = sc.out, sc.out
	sc.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sc.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	go func() { sc.cmd.Wait(); close(sc.exited) }()
	t.Cleanup(func() {
		sc.cmd.Process.Kill()
		<-sc.exited
		if t.Failed() {
			t.Logf("scanner output:\n%s", sc.out)
		}
	})
	conn, err := ipc.NewConn(mine)
	mine.Close()
	if err != nil {
		t.Fatal(err)
	}
	unexpected := func(p *ipc.Peer, m *ipc.Msg) {
		m.Close()
		t.Errorf("unexpected %v from the scanner process", m.Type)
	}
	sc.master = ipc.NewPeer(conn, "scanner", unexpected)
	go sc.master.Run()
	t.Cleanup(func() { sc.master.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := sc.master.Call(ctx, ipc.MsgHello, &ipc.Hello{Version: ipc.Version, Role: ipc.RoleScanner,
		Config: config, Foreground: true, Started: time.Now().Unix()}, ipc.MsgReady)
	if err != nil {
		t.Fatalf("hello: %v\n%s", err, sc.out)
	}
	if r := m.Payload.(*ipc.Ready); r.Pid != sc.cmd.Process.Pid {
		t.Fatalf("ready from pid %d, want %d", r.Pid, sc.cmd.Process.Pid)
	}

	a, b, err := ipc.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer b.Close()
	if err := sc.master.Send(ipc.MsgPeerLink, &ipc.PeerLink{Role: ipc.RoleSession, Index: 0}, fdOf(t, a)); err != nil {
		t.Fatal(err)
	}
	sconn, err := ipc.NewConn(b)
	if err != nil {
		t.Fatal(err)
	}
	sc.session = ipc.NewPeer(sconn, "scanner", unexpected)
	go sc.session.Run()
	t.Cleanup(func() { sc.session.Close() })
	return sc
}

// scan does what a session worker does at the end of DATA: MsgScan with
// the spool file's descriptor (opened read-only), and waits for the verdict.
func (sc *scannerChild) scan(t *testing.T, spool string, skip ...string) *ipc.Verdict {
	t.Helper()
	f, err := os.Open(spool)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	size := fi.Size() - int64(len(spoolHeader)) // the message, without the header line
	m, err := sc.session.Call(ctx, ipc.MsgScan, &ipc.Scan{SessionID: 99, Transaction: 1, Size: size,
		Client: harnessClient, Skip: skip}, ipc.MsgVerdict, fdOf(t, f))
	if err != nil {
		t.Fatalf("scan: %v\n%s", err, sc.out)
	}
	return m.Payload.(*ipc.Verdict)
}

// fdOf is f's descriptor, without Fd's switch to blocking mode.
func fdOf(t *testing.T, f *os.File) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}

// spoolHeader is the first line of a spool file, as a session worker
// writes it.
const spoolHeader = "X-Proxy-Spool-Info: src=192.0.2.1:40000, ident=, dst=198.51.100.7:25, trns=1\r\n"

// writeSpool writes a spool file as a session worker does (header line,
// then the message), root's and mode 0600 in a 0700 directory: neither
// the scanner process (set_user) nor clamd can open it by path.
func writeSpool(t *testing.T, msg []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("%d.1", time.Now().Unix()))
	b := append([]byte(spoolHeader), msg...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The scanner process on its own, unprivileged, with real clamd and spamd:
// FILDES and INSTREAM, spam and ham, auth_skip, the one log line per scan,
// an unexpected message from a session worker, and a clean exit (private
// directory removed) when master goes away.
func TestScannerChild(t *testing.T) {
	uid, _ := systemUser(t)
	c, s := harness.Clamd(t), harness.Spamd(t)
	base := fmt.Sprintf("mode getsockname\nlog_level debug\nset_user %s\nset_group %s\nspam_max_load 0\n"+
		"antispam_type spamassassin\nantispam_path %s\n", harness.TestUser, harness.TestUser, s.Socket)
	tok := harness.Token(t)
	virus := writeSpool(t, harness.VirusMessage("a@example.com", "b@example.org", tok))
	spam := writeSpool(t, harness.SpamMessage("a@example.com", "b@example.org", tok))
	ham := writeSpool(t, harness.Message("a@example.com", "b@example.org", tok))

	for _, tr := range []struct{ name, addr string }{{"fildes", c.Socket}, {"instream", c.Addr}} {
		t.Run(tr.name, func(t *testing.T) {
			sc := startScannerChild(t, base+"antivirus_type clamd\nantivirus_path "+tr.addr+"\n")
			if got, want := procUID(t, sc.cmd.Process.Pid), fmt.Sprintf("%d %d %d %d", uid, uid, uid, uid); got != want {
				t.Errorf("scanner uids %q, want %q", got, want)
			}
			if v := sc.scan(t, virus); v.Kind != ipc.VerdictVirus || v.Name == "" || !slices.Equal(v.Scanned, []string{"clamd"}) {
				t.Errorf("virus: %+v", v)
			}
			if v := sc.scan(t, spam); v.Kind != ipc.VerdictSpam || v.Score < 1000 || !slices.Equal(v.Scanned, []string{"clamd", "spamd"}) {
				t.Errorf("spam: %+v", v)
			}
			if v := sc.scan(t, ham); v.Kind != ipc.VerdictClean || v.Err != "" || !slices.Equal(v.Scanned, []string{"clamd", "spamd"}) {
				t.Errorf("ham: %+v", v)
			}
			if v := sc.scan(t, virus, "antivir"); v.Kind != ipc.VerdictClean || !slices.Equal(v.Scanned, []string{"spamd"}) {
				t.Errorf("virus, auth_skip antivir: %+v", v)
			}
			// One log line per scan (the output pipe is read asynchronously).
			deadline := time.Now().Add(5 * time.Second)
			for strings.Count(sc.out.String(), "scanner: scan session=99 trns=1") < 4 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := strings.Count(sc.out.String(), "scanner: scan session=99 trns=1"); n != 4 {
				t.Errorf("%d scan log lines, want 4:\n%s", n, sc.out)
			}

			// Master goes away: the process exits, quietly.
			sc.master.Close()
			select {
			case <-sc.exited:
				if code := sc.cmd.ProcessState.ExitCode(); code != 0 {
					t.Errorf("exit code %d, want 0", code)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the scanner process outlived its master's link")
			}
		})
	}
}

// A session worker that sends something else than MsgScan loses its link;
// the process stays up for the others. Master sending garbage is fatal.
func TestScannerChildUnexpected(t *testing.T) {
	systemUser(t)
	harness.Clamd(t) // skips unless the peers can run
	sc := startScannerChild(t, fmt.Sprintf("mode getsockname\nset_user %s\nset_group %s\n", harness.TestUser, harness.TestUser))
	if err := sc.session.Send(ipc.MsgSessionEnd, &ipc.SessionEnd{ID: 1, By: ipc.CloseQuit}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(sc.out.String(), "unexpected SESSION_END from session 0: closing the link") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line about the unexpected message:\n%s", sc.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-sc.exited:
		t.Fatal("the process exited")
	case <-time.After(200 * time.Millisecond):
	}
	if err := sc.master.Send(ipc.MsgSessionEnd, &ipc.SessionEnd{ID: 1, By: ipc.CloseQuit}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sc.exited:
		if code := sc.cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(sc.out.String(), "unexpected SESSION_END from master") {
			t.Errorf("exit code %d, output:\n%s", code, sc.out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the process survived an unexpected message from master")
	}
}

// mksd with the scanner process unprivileged: it copies the message into a
// private directory (0711, a file of mode spool_perm) that a root mksd
// reads, removes each copy, and the directory when it exits.
func TestScannerChildMksd(t *testing.T) {
	systemUser(t)
	harness.Clamd(t) // skips unless the peers can run
	dir, err := os.MkdirTemp("", "sgm-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "mksd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o666)
	t.Cleanup(func() { l.Close() })
	paths := make(chan string, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 4096)
			n, _ := c.Read(b)
			path := strings.TrimSuffix(strings.TrimPrefix(string(b[:n]), "S"), "\n")
			paths <- path
			content, err := os.ReadFile(path)
			switch {
			case err != nil:
				io.WriteString(c, "ERR "+err.Error()+"\n")
			case strings.Contains(string(content), string(harness.EICAR())):
				io.WriteString(c, "VIR EICAR "+path+"\n")
			default:
				io.WriteString(c, "OK "+path+"\n")
			}
			c.Close()
		}
	}()
	sc := startScannerChild(t, fmt.Sprintf("mode getsockname\nset_user %s\nset_group %s\nantivirus_type mksd\nantivirus_path %s\n", harness.TestUser, harness.TestUser, sock))
	spool := writeSpool(t, append(harness.Message("a@example.com", "b@example.org", "x"), harness.EICAR()...))
	if v := sc.scan(t, spool); v.Kind != ipc.VerdictVirus || v.Name != "EICAR" {
		t.Errorf("verdict %+v, want virus EICAR", v)
	}
	path := <-paths
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the copy %s is still there (%v)", path, err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("private directory %s: %v, want mode 0711", filepath.Dir(path), fi)
	}
	sc.master.Close()
	<-sc.exited
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("the private directory is still there after the exit (%v)", err)
	}
}

var harnessClient = netip.MustParseAddrPort("192.0.2.1:40000")

// syncBuffer collects a process's output, safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
