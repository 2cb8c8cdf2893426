package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment variables the harness reads.
const (
	// EnvBin names a prebuilt smtp-gated binary to run instead of building
	// smtp-gated/cmd/smtp-gated.
	EnvBin = "SMTPGATED_BIN"
	// EnvCtlBin names a prebuilt smtpgatectl binary (see CtlBinary).
	EnvCtlBin = "SMTPGATECTL_BIN"
	// EnvBuildFlags adds flags to the daemon's go build (e.g. "-race").
	EnvBuildFlags = "SMTPGATED_BUILDFLAGS"
)

// DefaultReadyTimeout bounds the wait for READY=1 in StartDaemon.
const DefaultReadyTimeout = 20 * time.Second

// Notification is one sd_notify datagram the daemon sent.
type Notification struct {
	Text string    // the datagram, e.g. "READY=1" or "RELOADING=1\nMONOTONIC_USEC=123"
	Pid  int       // sender's pid (SCM_CREDENTIALS); systemd's NotifyAccess=main accepts only the main pid
	Time time.Time // when the harness received it
}

// Has reports whether one of the datagram's lines is want ("READY=1"), or
// starts with want when want ends in "=" ("MONOTONIC_USEC=").
func (n Notification) Has(want string) bool {
	for line := range strings.SplitSeq(n.Text, "\n") {
		if line == want || (strings.HasSuffix(want, "=") && strings.HasPrefix(line, want)) {
			return true
		}
	}
	return false
}

// Value returns the value of KEY in the datagram ("" if absent).
func (n Notification) Value(key string) string {
	for line := range strings.SplitSeq(n.Text, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// Mark is a position in a Daemon's log and notifications: WaitLogAfter and
// WaitNotifyAfter only look at what came after it.
type Mark struct{ log, notify int }

// Daemon is a running smtp-gated (foreground, -f) started by StartDaemon.
type Daemon struct {
	cmd    *exec.Cmd
	dir    string
	config string
	socket string

	mu      sync.Mutex
	lines   []string
	notes   []Notification
	logDone bool          // the output pipe reached EOF
	changed chan struct{} // closed and replaced on every new line, notification or exit

	exited chan struct{} // closed when the process has been waited for and its output read
	state  *os.ProcessState

	killOnce sync.Once
	logShown bool // a failure message already carried the whole output
}

type daemonOpts struct {
	args         []string
	env          []string
	cred         *syscall.Credential
	bin          string
	readyTimeout time.Duration
	noReady      bool
	files        []*os.File
}

// Option changes how StartDaemon runs the daemon.
type Option func(*daemonOpts)

// WithArgs adds command-line arguments between -f and the configuration
// file: smtp-gated -f ARGS... CONFIGFILE.
func WithArgs(args ...string) Option {
	return func(o *daemonOpts) { o.args = append(o.args, args...) }
}

// WithEnv adds "KEY=VALUE" entries to the daemon's environment.
func WithEnv(kv ...string) Option {
	return func(o *daemonOpts) { o.env = append(o.env, kv...) }
}

// WithUser runs the daemon as uid/gid (supplementary groups: none) instead
// of as the test's own user.
func WithUser(uid, gid uint32) Option {
	return func(o *daemonOpts) { o.cred = &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}} }
}

// WithExtraFiles passes files to the daemon as descriptors 3, 4, ...
// (exec.Cmd's ExtraFiles): a listener for socket activation, say. The
// caller keeps and closes its copies.
func WithExtraFiles(files ...*os.File) Option {
	return func(o *daemonOpts) { o.files = append(o.files, files...) }
}

// WithBinary runs the given executable instead of the smtp-gated built from
// this module.
func WithBinary(path string) Option {
	return func(o *daemonOpts) { o.bin = path }
}

// WithReadyTimeout changes how long StartDaemon waits for READY=1
// (DefaultReadyTimeout).
func WithReadyTimeout(d time.Duration) Option {
	return func(o *daemonOpts) { o.readyTimeout = d }
}

// WithoutReady makes StartDaemon return as soon as the process has started,
// without waiting for READY=1: for a test that expects the daemon to refuse
// to start (check Wait/WaitExit and Log).
func WithoutReady() Option {
	return func(o *daemonOpts) { o.noReady = true }
}

var builds struct {
	mu  sync.Mutex
	dir string // one directory per test binary, removed by Main
	m   map[string]*buildResult
}

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// BuildBinary builds the main package pkg of this module (an import path,
// e.g. "smtp-gated/cmd/smtpgatectl") once per test binary, into a temporary
// directory removed by Main, and returns the executable's path. EnvBuildFlags
// adds build flags.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	requireMain(t, "BuildBinary")
	builds.mu.Lock()
	if builds.m == nil {
		builds.m = map[string]*buildResult{}
	}
	r := builds.m[pkg]
	if r == nil {
		r = &buildResult{}
		builds.m[pkg] = r
	}
	builds.mu.Unlock()
	r.once.Do(func() { r.path, r.err = goBuild(pkg) })
	if r.err != nil {
		t.Fatalf("build %s: %v", pkg, r.err)
	}
	return r.path
}

func goBuild(pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	builds.mu.Lock()
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "smtpgated-bin-")
		if err != nil {
			builds.mu.Unlock()
			return "", err
		}
		os.Chmod(dir, 0o755) // the binaries may run as another user
		builds.dir = dir
		atTeardown(func() { os.RemoveAll(dir) })
	}
	dir := builds.dir
	builds.mu.Unlock()
	gobin, err := exec.LookPath("go") // go test puts GOROOT/bin first in PATH
	if err != nil {
		return "", fmt.Errorf("go command not found: %w", err)
	}
	out := filepath.Join(dir, path.Base(pkg))
	args := []string{"build", "-o", out}
	args = append(args, strings.Fields(os.Getenv(EnvBuildFlags))...)
	args = append(args, pkg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, args...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return out, nil
}

// DaemonBinary returns the smtp-gated executable: EnvBin if set, else
// smtp-gated/cmd/smtp-gated built once per test binary.
func DaemonBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv(EnvBin); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatalf("%s: %v", EnvBin, err)
		}
		return abs
	}
	return BuildBinary(t, "smtp-gated/cmd/smtp-gated")
}

// CtlBinary returns the smtpgatectl executable: EnvCtlBin if set, else
// smtp-gated/cmd/smtpgatectl built once per test binary.
func CtlBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv(EnvCtlBin); bin != "" {
		abs, err := filepath.Abs(bin)
		if err != nil {
			t.Fatalf("%s: %v", EnvCtlBin, err)
		}
		return abs
	}
	return BuildBinary(t, "smtp-gated/cmd/smtpgatectl")
}

// StartDaemon writes config to a configuration file and runs
// `smtp-gated -f CONFIGFILE` in its own process group, with NOTIFY_SOCKET
// pointing at a socket of the harness. It waits (DefaultReadyTimeout) for
// READY=1 and fails the test with the daemon's output if the daemon exits or
// does not get ready in time. The daemon's stdout and stderr are collected
// line by line (Log, WaitLog). t.Cleanup kills the whole process group (and
// any descendant that left it) with SIGKILL if the daemon is still running.
func StartDaemon(t testing.TB, config string, opts ...Option) *Daemon {
	t.Helper()
	requireMain(t, "StartDaemon")
	o := daemonOpts{readyTimeout: DefaultReadyTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.bin == "" {
		o.bin = DaemonBinary(t)
	}
	// A short directory of its own: a unix socket path must fit in 108 bytes,
	// which t.TempDir() (named after the test) does not guarantee.
	dir, err := os.MkdirTemp("", "sgd-")
	if err != nil {
		t.Fatalf("StartDaemon: %v", err)
	}
	os.Chmod(dir, 0o755) // tests may put the daemon's files here; children run unprivileged
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Daemon{
		dir:     dir,
		config:  filepath.Join(dir, "smtp-gated.conf"),
		socket:  filepath.Join(dir, "notify.sock"),
		changed: make(chan struct{}),
		exited:  make(chan struct{}),
	}
	if err := os.WriteFile(d.config, []byte(config), 0o644); err != nil {
		t.Fatalf("StartDaemon: %v", err)
	}
	nconn, err := listenNotify(d.socket)
	if err != nil {
		t.Fatalf("StartDaemon: notify socket: %v", err)
	}
	go d.readNotify(nconn)

	// Registered before the start, so that a teardown (SIGINT) racing with
	// this start still kills the daemon.
	started, err := beginStart(func() {
		if d.cmd != nil {
			d.kill()
		}
	})
	if err != nil {
		nconn.Close()
		t.Fatalf("StartDaemon: %v", err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		started()
		nconn.Close()
		t.Fatalf("StartDaemon: %v", err)
	}
	args := append([]string{"-f"}, o.args...)
	args = append(args, d.config)
	cmd := exec.Command(o.bin, args...)
	cmd.Dir = dir
	cmd.Env = append(daemonEnviron(), "NOTIFY_SOCKET="+d.socket)
	cmd.Env = append(cmd.Env, o.env...)
	cmd.Stdout = pw // one pipe for both: lines keep their order
	cmd.Stderr = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: o.cred}
	cmd.ExtraFiles = o.files
	if err := cmd.Start(); err != nil {
		started()
		pr.Close()
		pw.Close()
		nconn.Close()
		t.Fatalf("StartDaemon: start %s: %v", o.bin, err)
	}
	pw.Close()
	d.cmd = cmd
	logEOF := make(chan struct{})
	go func() {
		d.readLog(pr)
		close(logEOF)
	}()
	go func() {
		cmd.Wait()
		// The last lines may still be in the pipe: let the reader take
		// them before the exit is announced, unless a child that
		// outlives master holds the pipe open.
		select {
		case <-logEOF:
		case <-time.After(2 * time.Second):
		}
		d.mu.Lock()
		d.state = cmd.ProcessState
		d.broadcastLocked()
		d.mu.Unlock()
		close(d.exited)
	}()
	started()
	t.Cleanup(func() {
		if t.Failed() && !d.logShown {
			t.Logf("smtp-gated (pid %d) output, last 60 lines:\n%s", d.Pid(), tail(d.Log(), 60))
		}
		d.kill()
		nconn.Close()
		// Collect the rest of the output so no reader goroutine outlives the test.
		select {
		case <-d.logEOF():
		case <-time.After(5 * time.Second):
			t.Errorf("smtp-gated output pipe still open 5 s after the kill: a process outside its group holds it")
		}
	})
	if o.noReady {
		return d
	}
	if _, _, err := d.waitNotify(Mark{}, "READY=1", o.readyTimeout); err != nil {
		d.kill()
		<-d.exited
		d.logShown = true
		t.Fatalf("smtp-gated did not start: %v\n--- its output:\n%s", err, d.Log())
	}
	return d
}

// daemonEnviron is the test's environment without the variables that
// systemd would set for another unit.
func daemonEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "NOTIFY_SOCKET", k == "WATCHDOG_USEC", k == "WATCHDOG_PID",
			strings.HasPrefix(k, "LISTEN_"):
			continue
		}
		env = append(env, kv)
	}
	return env
}

func listenNotify(path string) (*net.UnixConn, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	// World-writable like systemd's own notify socket: a child that already
	// dropped privileges may notify too (systemd would ignore it; Pid shows it).
	os.Chmod(path, 0o666)
	rc, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = passCred(int(fd))
		})
		if err == nil {
			err = serr
		}
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("SO_PASSCRED: %w", err)
	}
	return c, nil
}

func (d *Daemon) readNotify(c *net.UnixConn) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, credSpace())
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return // closed by Cleanup
		}
		note := Notification{Text: strings.TrimRight(string(buf[:n]), "\n"), Time: time.Now()}
		note.Pid = credPid(oob[:oobn])
		d.mu.Lock()
		d.notes = append(d.notes, note)
		d.broadcastLocked()
		d.mu.Unlock()
	}
}

func (d *Daemon) readLog(r *os.File) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			d.mu.Lock()
			d.lines = append(d.lines, strings.TrimRight(line, "\r\n"))
			d.broadcastLocked()
			d.mu.Unlock()
		}
		if err != nil {
			d.mu.Lock()
			d.logDone = true
			d.broadcastLocked()
			d.mu.Unlock()
			return
		}
	}
}

func (d *Daemon) broadcastLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// logEOF returns a channel closed once the output pipe reached EOF.
func (d *Daemon) logEOF() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for {
			d.mu.Lock()
			fin, ch := d.logDone, d.changed
			d.mu.Unlock()
			if fin {
				close(done)
				return
			}
			<-ch
		}
	}()
	return done
}

// kill sends SIGKILL to the daemon's process group, and to any descendant
// that left it, unless everything is already gone.
func (d *Daemon) kill() {
	d.killOnce.Do(func() {
		pid := d.cmd.Process.Pid
		victims := Descendants(pid) // before the kill: orphans get reparented
		select {
		case <-d.exited:
		default:
			victims = append(victims, pid)
		}
		if len(ProcessGroup(pid)) > 0 {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
		for _, p := range victims {
			syscall.Kill(p, syscall.SIGKILL)
		}
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
		}
		// SIGKILL is delivered, not yet acted on: a child reparented to
		// init may still be running for a moment after its master is
		// reaped. The test that started them has not ended until they
		// are gone.
		deadline := time.Now().Add(10 * time.Second)
		for _, p := range victims {
			for pidAlive(p, 0) && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
			}
		}
	})
}

// Pid returns the daemon's (master's) pid.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// ConfigFile returns the path of the configuration file: rewrite it and send
// SIGHUP (or call Reload) to test a reload.
func (d *Daemon) ConfigFile() string { return d.config }

// Dir returns the daemon's private temporary directory (mode 0755, removed
// after the test): a place for its pidfile, statefile, spool, locks.
func (d *Daemon) Dir() string { return d.dir }

// NotifySocket returns the path of the harness's NOTIFY_SOCKET.
func (d *Daemon) NotifySocket() string { return d.socket }

// Signal sends sig to the daemon (the master process only).
func (d *Daemon) Signal(sig os.Signal) error { return d.cmd.Process.Signal(sig) }

// Mark returns the current position in the log and the notifications.
func (d *Daemon) Mark() Mark {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Mark{log: len(d.lines), notify: len(d.notes)}
}

// Log returns the daemon's output so far, one line per event.
func (d *Daemon) Log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.lines, "\n")
}

// LogLines returns the output lines so far.
func (d *Daemon) LogLines() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.lines...)
}

// LogSince returns the output lines after m.
func (d *Daemon) LogSince(m Mark) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m.log > len(d.lines) {
		return nil
	}
	return append([]string(nil), d.lines[m.log:]...)
}

// Notifications returns the sd_notify datagrams received so far.
func (d *Daemon) Notifications() []Notification {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Notification(nil), d.notes...)
}

// WaitLog waits until an output line (any since the start) matches re and
// returns it. It fails the test after timeout, or as soon as the daemon's
// output has ended.
func (d *Daemon) WaitLog(t testing.TB, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	return d.WaitLogAfter(t, Mark{}, re, timeout)
}

// WaitLogAfter is WaitLog for the lines after m (see Mark).
func (d *Daemon) WaitLogAfter(t testing.TB, m Mark, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	line, err := d.waitLog(m, re, timeout)
	if err != nil {
		t.Fatalf("%v\n--- smtp-gated output since the mark:\n%s", err, strings.Join(d.LogSince(m), "\n"))
	}
	return line
}

func (d *Daemon) waitLog(m Mark, re *regexp.Regexp, timeout time.Duration) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	i := m.log
	for {
		d.mu.Lock()
		for ; i < len(d.lines); i++ {
			if re.MatchString(d.lines[i]) {
				line := d.lines[i]
				d.mu.Unlock()
				return line, nil
			}
		}
		done, ch := d.logDone, d.changed
		d.mu.Unlock()
		if done {
			return "", fmt.Errorf("no log line matching %q: the daemon's output ended (%s)", re, d.exitString())
		}
		select {
		case <-ch:
		case <-timer.C:
			return "", fmt.Errorf("no log line matching %q within %v", re, timeout)
		}
	}
}

// WaitNotify waits for a notification (any since the start) that Has want,
// e.g. "READY=1", and returns it. It fails the test after timeout or when the
// daemon exits first.
func (d *Daemon) WaitNotify(t testing.TB, want string, timeout time.Duration) Notification {
	t.Helper()
	return d.WaitNotifyAfter(t, Mark{}, want, timeout)
}

// WaitNotifyAfter is WaitNotify for the notifications after m.
func (d *Daemon) WaitNotifyAfter(t testing.TB, m Mark, want string, timeout time.Duration) Notification {
	t.Helper()
	n, _, err := d.waitNotify(m, want, timeout)
	if err != nil {
		var notes []string
		for _, n := range d.Notifications() {
			notes = append(notes, fmt.Sprintf("pid %d: %q", n.Pid, n.Text))
		}
		t.Fatalf("%v\n--- notifications: %s\n--- smtp-gated output since the mark:\n%s",
			err, strings.Join(notes, ", "), strings.Join(d.LogSince(m), "\n"))
	}
	return n
}

// waitNotify returns the first notification after m that Has want, and its index.
func (d *Daemon) waitNotify(m Mark, want string, timeout time.Duration) (Notification, int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	i := m.notify
	for {
		d.mu.Lock()
		for ; i < len(d.notes); i++ {
			if d.notes[i].Has(want) {
				n := d.notes[i]
				d.mu.Unlock()
				return n, i, nil
			}
		}
		exited, ch := d.state != nil, d.changed
		d.mu.Unlock()
		if exited {
			// A datagram sent just before exiting may still be in the socket.
			time.Sleep(20 * time.Millisecond)
			d.mu.Lock()
			more := len(d.notes) > i
			d.mu.Unlock()
			if more {
				continue
			}
			return Notification{}, 0, fmt.Errorf("no %s notification: the daemon %s", want, d.exitString())
		}
		select {
		case <-ch:
		case <-timer.C:
			return Notification{}, 0, fmt.Errorf("no %s notification within %v", want, timeout)
		}
	}
}

// Reload sends SIGHUP and waits (20 s) for RELOADING=1 then READY=1, as
// systemd's Type=notify-reload does; it returns the RELOADING notification
// (with MONOTONIC_USEC).
func (d *Daemon) Reload(t testing.TB) Notification {
	t.Helper()
	m := d.Mark()
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	n, i, err := d.waitNotify(m, "RELOADING=1", 20*time.Second)
	if err != nil {
		t.Fatalf("reload: %v\n--- smtp-gated output since SIGHUP:\n%s", err, strings.Join(d.LogSince(m), "\n"))
	}
	d.WaitNotifyAfter(t, Mark{log: m.log, notify: i + 1}, "READY=1", 20*time.Second)
	return n
}

func (d *Daemon) exitString() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == nil {
		return "is still running"
	}
	return "exited: " + d.state.String()
}

// Stop sends SIGTERM, waits (30 s) for the daemon to exit and returns its
// exit code (-1 if a signal ended it). It fails the test on timeout.
func (d *Daemon) Stop(t testing.TB) int {
	t.Helper()
	if err := d.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("SIGTERM: %v", err)
	}
	return d.WaitExit(t, 30*time.Second)
}

// WaitExit waits up to timeout for the daemon to exit and returns its exit
// code (-1 if a signal ended it); it fails the test on timeout.
func (d *Daemon) WaitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-d.exited:
		return d.state.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("smtp-gated (pid %d) still running %v later", d.Pid(), timeout)
		return 0
	}
}

// Wait blocks until the daemon exits and returns its exit code (-1 if a
// signal ended it). Prefer WaitExit, which is bounded.
func (d *Daemon) Wait() int {
	<-d.exited
	return d.state.ExitCode()
}

// Exited returns a channel that is closed when the daemon has exited.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// ProcessState returns the daemon's exit state, nil while it runs.
func (d *Daemon) ProcessState() *os.ProcessState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}
