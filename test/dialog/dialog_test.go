// Package dialog runs dialogue scripts (testdata/*.dlg) against the real
// smtp-gated in fixed mode: the test plays both the client and the MTA,
// line by line, so that every byte the proxy adds, hides, refuses or
// reorders is seen. The script format is described in testdata/README.
//
// Each script is a subtest named after its file without ".dlg":
//
//	go test ./test/dialog -run 'TestDialog/relay_basic$'
package dialog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// TestDialog runs every testdata/*.dlg as a subtest.
func TestDialog(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.dlg"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.dlg")
	}
	sort.Strings(files)
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".dlg"), func(t *testing.T) {
			t.Parallel() // each script has its own daemon, MTA and ports
			s, err := parseFile(f)
			if err != nil {
				t.Fatal(err)
			}
			runScript(t, s)
		})
	}
}

// logTailLines is how many daemon log lines a failure message carries.
const logTailLines = 12

// peer is one end the test plays: the client, or the MTA's accepted
// connection.
type peer struct {
	name string // "client" or "MTA", for messages
	conn net.Conn
	r    *bufio.Reader
}

// run is the state of one script while it runs.
type run struct {
	t      *testing.T
	s      *script
	st     *step // the step running, for messages
	d      *harness.Daemon
	ln     *net.TCPListener // the scripted MTA's listener
	proxy  string           // the proxy's address, host:port
	client *peer            // nil before c connect and after c close
	mta    *peer            // nil before m accept and after m close
	conns  []net.Conn       // everything opened, closed at the end
	addrs  map[string]string
	nat    string // nat_header name, for m skip-header
	sent   []byte // the client's last DATA payload before the final ".\r\n"
	got    []byte // the MTA's last DATA payload before the final ".\r\n"
	gotOK  bool   // got holds a complete m data
	sentOK bool   // sent holds a c data
}

func runScript(t *testing.T, s *script) {
	if (s.mta6 || s.client6) && !harness.HasIPv6Loopback() {
		t.Skip("no ::1 on this machine")
	}
	r := &run{t: t, s: s, addrs: map[string]string{}, nat: "X-Nat-Received"}
	defer r.closeAll()

	mtaHost, proxyHost := "127.0.0.1", "127.0.0.1"
	if s.mta6 {
		mtaHost = "::1"
	}
	if s.client6 {
		proxyHost = "::1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(mtaHost, "0"))
	if err != nil {
		t.Fatalf("%s: scripted MTA: %v", s.file, err)
	}
	r.ln = ln.(*net.TCPListener)
	t.Cleanup(func() { ln.Close() })
	mtaPort := r.ln.Addr().(*net.TCPAddr).Port
	r.addrs["${mta}"] = r.ln.Addr().String()

	dir := harness.DaemonDir(t, "sgdlg-")
	// The session workers run as nobody when the test runs as root: the
	// directories they write in are open to them.
	for _, sub := range []string{"spool", "lock", "ratelimit"} {
		p := filepath.Join(dir, sub)
		if err := os.Mkdir(p, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o777)
	}
	port := harness.FreePort(t)
	r.proxy = net.JoinHostPort(proxyHost, strconv.Itoa(port))
	r.addrs["${proxy}"] = r.proxy

	cfg := fmt.Sprintf(`mode fixed
fixed_server %s
fixed_server_port %d
bind_address %s
port %d
proxy_name proxy.test
pidfile %[5]s/smtp-gated.pid
control_socket %[5]s/control.sock
statefile %[5]s/state
spool_path %[5]s/spool
lock_path %[5]s/lock
ratelimit_path %[5]s/ratelimit
session_workers 1
log_level debug
earlytalker no
timeout_session 5
max_load 0
# %[6]s
%[7]s
`, mtaHost, mtaPort, proxyHost, port, dir, s.file, strings.Join(s.config, "\n"))
	for _, c := range s.config {
		if opt, v, _ := strings.Cut(c, " "); opt == "nat_header" {
			r.nat = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	r.d = harness.StartDaemon(t, cfg)

	for i := range s.steps {
		r.st = &s.steps[i]
		r.exec()
	}
	r.st = nil
	r.closeAll()
	r.checkDaemon()
}

// fail stops the script with "file:line: step: message" and the daemon's
// last log lines.
func (r *run) fail(format string, args ...any) {
	r.t.Helper()
	where := r.s.file
	if r.st != nil {
		where = fmt.Sprintf("%s:%d: %s", r.s.file, r.st.line, r.st.text)
	}
	r.t.Fatalf("%s: %s%s", where, fmt.Sprintf(format, args...), r.logTail())
}

func (r *run) logTail() string {
	lines := r.d.LogLines()
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return fmt.Sprintf("\n--- smtp-gated log, last %d lines:\n%s", len(lines), strings.Join(lines, "\n"))
}

// peer returns the connection of the step's side, failing if there is none.
func (r *run) peer() *peer {
	r.t.Helper()
	p := r.client
	if r.st.side == "m" {
		p = r.mta
	}
	if p == nil {
		who := map[string]string{"c": "the client is not connected (c connect)", "m": "the MTA has no connection (m accept)"}
		r.fail("%s", who[r.st.side])
	}
	return p
}

func (r *run) exec() {
	r.t.Helper()
	st := r.st
	switch st.op {
	case "connect":
		if r.client != nil {
			r.fail("the client is already connected")
		}
		c, err := net.DialTimeout("tcp", r.proxy, readTimeout)
		if err != nil {
			r.fail("%v", err)
		}
		r.conns = append(r.conns, c)
		r.client = &peer{name: "client", conn: c, r: bufio.NewReader(c)}
		r.addrs["${client}"] = c.LocalAddr().String()
		r.addrs["${client_ip}"] = c.LocalAddr().(*net.TCPAddr).IP.String()
	case "accept":
		r.ln.SetDeadline(time.Now().Add(readTimeout))
		c, err := r.ln.Accept()
		if err != nil {
			r.fail("no connection from the proxy: %v", describe(err, readTimeout))
		}
		r.conns = append(r.conns, c)
		r.mta = &peer{name: "MTA", conn: c, r: bufio.NewReader(c)}
	case "noconnect":
		r.ln.SetDeadline(time.Now().Add(noconnectTimeout))
		c, err := r.ln.Accept()
		if err == nil {
			c.Close()
			r.fail("the proxy connected from %v", c.RemoteAddr())
		}
		if !isTimeout(err) {
			r.fail("accept: %v", err)
		}
	case "->":
		r.write(r.peer(), []byte(st.arg+"\r\n"))
	case "raw":
		r.write(r.peer(), st.raw)
	case "long":
		r.write(r.peer(), []byte(st.arg+strings.Repeat("x", st.n-len(st.arg))+"\r\n"))
	case "<-":
		if line := r.readLine(r.peer()); line != st.arg {
			r.fail("read %q: not equal", line)
		}
	case "<~":
		re := r.regexp(st.arg)
		if line := r.readLine(r.peer()); !re.MatchString(line) {
			r.fail("read %q: does not match", line)
		}
	case "<-raw":
		p := r.peer()
		p.conn.SetReadDeadline(time.Now().Add(readTimeout))
		buf := make([]byte, len(st.raw))
		n, err := io.ReadFull(p.r, buf)
		if err != nil {
			r.fail("read %q (%d of %d bytes): %s", buf[:n], n, len(buf), describe(err, readTimeout))
		}
		if !bytes.Equal(buf, st.raw) {
			r.fail("read %q: not equal", buf)
		}
	case "data":
		if st.side == "c" {
			r.write(r.peer(), st.raw)
			r.sent, r.sentOK = st.raw[:len(st.raw)-3], true
			return
		}
		r.readData(r.peer())
	case "data-equals":
		r.dataEquals()
	case "skip-header":
		r.skipHeader(r.peer())
	case "eof":
		r.eof(r.peer(), false)
	case "drain":
		r.eof(r.peer(), true)
	case "data-aborted":
		r.dataAborted(r.peer())
	case "close":
		p := r.peer()
		p.conn.Close()
		if st.side == "c" {
			r.client = nil
		} else {
			r.mta = nil
		}
	case "nothing":
		p := r.peer()
		p.conn.SetReadDeadline(time.Now().Add(st.dur))
		_, err := p.r.Peek(1)
		if err == nil {
			b, _ := p.r.Peek(p.r.Buffered())
			r.fail("the %s received %q", p.name, b)
		}
		if !isTimeout(err) {
			r.fail("the %s: %s", p.name, describe(err, st.dur))
		}
	case "log":
		re := r.regexp(st.arg)
		if _, ok := r.waitLog(re, readTimeout); !ok {
			r.fail("no daemon log line matches within %v", readTimeout)
		}
	case "nolog":
		re := r.regexp(st.arg)
		for _, l := range r.d.LogLines() {
			if re.MatchString(l) {
				r.fail("a log line matches: %q", l)
			}
		}
	case "expect-close-line":
		src, ok := r.addrs["${client}"]
		if !ok {
			r.fail("no client has connected")
		}
		closeRE := regexp.MustCompile(`\bCLOSE(:DIRECT)? .*` + harness.CloseSrc(src))
		line, ok := r.waitLog(closeRE, readTimeout)
		if !ok {
			r.fail("no CLOSE line for src=%s within %v", src, readTimeout)
		}
		if !r.regexp(st.arg).MatchString(line) {
			r.fail("CLOSE line %q: does not match", line)
		}
	case "sleep":
		time.Sleep(st.dur)
	default:
		r.fail("step %q not implemented", st.op)
	}
}

func (r *run) regexp(src string) *regexp.Regexp {
	r.t.Helper()
	re, err := regexp.Compile(expand(src, r.addrs))
	if err != nil {
		r.fail("bad regexp: %v", err)
	}
	return re
}

func (r *run) write(p *peer, b []byte) {
	r.t.Helper()
	p.conn.SetWriteDeadline(time.Now().Add(readTimeout))
	if n, err := p.conn.Write(b); err != nil {
		r.fail("the %s wrote %d of %d bytes: %s", p.name, n, len(b), describe(err, readTimeout))
	}
}

// readLine reads one CRLF-terminated line and returns it without CRLF.
func (r *run) readLine(p *peer) string {
	r.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(readTimeout))
	s, err := p.r.ReadString('\n')
	if err != nil {
		if s == "" {
			r.fail("read nothing: %s", describe(err, readTimeout))
		}
		r.fail("read %q without end of line: %s", s, describe(err, readTimeout))
	}
	line, ok := strings.CutSuffix(s, "\r\n")
	if !ok {
		r.fail("read %q: a bare LF, not CRLF", s)
	}
	return line
}

// readData reads a DATA payload up to the line ".\r\n" (whole, within
// readTimeout) and keeps it without that line.
func (r *run) readData(p *peer) {
	r.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(readTimeout))
	var body []byte
	r.gotOK = false
	for {
		s, err := p.r.ReadString('\n')
		if err != nil {
			r.fail("after %d bytes of DATA (last %q), read %q: %s", len(body), last(body, 80), s, describe(err, readTimeout))
		}
		if s == ".\r\n" {
			break
		}
		body = append(body, s...)
	}
	r.got, r.gotOK = body, true
}

func (r *run) dataEquals() {
	r.t.Helper()
	switch {
	case !r.sentOK:
		r.fail("the client has sent no DATA (c data)")
	case !r.gotOK:
		r.fail("the MTA has read no DATA (m data)")
	}
	if bytes.Equal(r.got, r.sent) {
		return
	}
	i := 0
	for i < len(r.got) && i < len(r.sent) && r.got[i] == r.sent[i] {
		i++
	}
	from := max(i-40, 0)
	r.fail("the MTA got %d bytes, the client sent %d: they differ at byte %d:\n  got  %q\n  sent %q",
		len(r.got), len(r.sent), i, r.got[from:min(i+40, len(r.got))], r.sent[from:min(i+40, len(r.sent))])
}

// skipHeader reads the proxy's NAT header: the next line must start with
// "<nat_header>:"; its continuation lines (starting with a space or a tab)
// are dropped with it.
func (r *run) skipHeader(p *peer) {
	r.t.Helper()
	line := r.readLine(p)
	if !strings.HasPrefix(strings.ToLower(line), strings.ToLower(r.nat)+":") {
		r.fail("read %q: not a %s header", line, r.nat)
	}
	for {
		p.conn.SetReadDeadline(time.Now().Add(readTimeout))
		b, err := p.r.Peek(1)
		if err != nil {
			r.fail("after the %s header: %s", r.nat, describe(err, readTimeout))
		}
		if b[0] != ' ' && b[0] != '\t' {
			return
		}
		r.readLine(p)
	}
}

// eof waits (eofTimeout) for the end of the stream. With drain, what
// arrives first is read and dropped; without, anything arriving fails.
func (r *run) eof(p *peer, drain bool) {
	r.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(eofTimeout))
	buf := make([]byte, 4096)
	dropped := 0
	for {
		n, err := p.r.Read(buf)
		if n > 0 && !drain {
			r.fail("the %s read %q, want end of file", p.name, buf[:n])
		}
		dropped += n
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			return
		case errors.Is(err, syscall.ECONNRESET):
			r.fail("the %s got a connection reset (RST), not a clean end of file (after %d bytes)", p.name, dropped)
		default:
			r.fail("the %s, after %d bytes: %s", p.name, dropped, describe(err, eofTimeout))
		}
	}
}

// dataAborted reads what comes of a DATA payload until end of file
// (eofTimeout) and fails if a final ".\r\n" line came: the MTA must not
// be able to accept a message the proxy cut off.
func (r *run) dataAborted(p *peer) {
	r.t.Helper()
	p.conn.SetReadDeadline(time.Now().Add(eofTimeout))
	n := 0
	for {
		s, err := p.r.ReadString('\n')
		n += len(s)
		if s == ".\r\n" {
			r.fail("the MTA received the final \".\" after %d bytes of DATA: the message was not cut off", n-3)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			return
		default:
			r.fail("after %d bytes of DATA: %s", n, describe(err, eofTimeout))
		}
	}
}

// waitLog polls the daemon's output for a line matching re.
func (r *run) waitLog(re *regexp.Regexp, timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range r.d.LogLines() {
			if re.MatchString(l) {
				return l, true
			}
		}
		if time.Now().After(deadline) {
			return "", false
		}
		select {
		case <-r.d.Exited():
			// One last look: the output may have been read after the check.
			for _, l := range r.d.LogLines() {
				if re.MatchString(l) {
					return l, true
				}
			}
			return "", false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (r *run) closeAll() {
	for _, c := range r.conns {
		c.Close()
	}
	r.conns, r.client, r.mta = nil, nil, nil
}

// checkDaemon fails a script after which the daemon is gone or has
// panicked, even if every step passed.
func (r *run) checkDaemon() {
	r.t.Helper()
	select {
	case <-r.d.Exited():
		r.fail("smtp-gated exited during the script")
	default:
	}
	for _, l := range r.d.LogLines() {
		if strings.HasPrefix(l, "panic:") || strings.Contains(l, "fatal error:") {
			r.fail("smtp-gated panicked: %q", l)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// describe turns a read or write error into words for a failure message.
func describe(err error, timeout time.Duration) string {
	switch {
	case isTimeout(err):
		return fmt.Sprintf("timeout after %v", timeout)
	case errors.Is(err, io.EOF):
		return "end of file (the other side closed)"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "end of file (the other side closed)"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset (RST)"
	}
	return err.Error()
}

func last(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
