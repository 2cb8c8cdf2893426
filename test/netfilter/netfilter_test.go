//go:build linux

// Package netfilter_test is the end-to-end test of mode netfilter: a client,
// a NAT gateway running smtp-gated behind an iptables/ip6tables REDIRECT, and
// an MTA, each in a network namespace of its own that the test creates and
// removes. It runs as root only (namespaces, iptables).
//
//	CLI  192.0.2.2      2001:db8:1::2  ──veth──  192.0.2.1     2001:db8:1::1   GW
//	GW   198.51.100.1   2001:db8:2::1  ──veth──  198.51.100.2  2001:db8:2::2   MTA
//
// GW forwards, redirects TCP port 25 arriving from CLI to the proxy on port
// 9199 (REDIRECT), and runs `ip netns exec GW smtp-gated -f CONFIG`. The MTA
// is a small SMTP server of this test that records every byte it receives;
// the client is this test too. Both open their sockets from an OS thread
// that joined the namespace (setns), so no helper process is needed.
package netfilter_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/test/harness"
	"smtp-gated/test/netns"
)

func TestMain(m *testing.M) { harness.Main(m) }

const (
	proxyPort = 9199
	proxyName = "nf-proxy.test"
	// loopText is msg_loop_avoidance in the daemon's configuration.
	loopText = "Refusing to relay into the proxy itself (netfilter test)"
	mtaName  = "mta.nf-test.example"
	// ioTimeout bounds every read and write of the test's client and MTA,
	// and every wait for a log line.
	ioTimeout = 15 * time.Second
	// nsPrefix starts the names of this test's namespaces: nsPrefix + pid
	// + "-cli" (or -gw, -mta). The pid lets a later run recognise what a
	// killed run left behind.
	nsPrefix = "sgnf"
)

// The documentation addresses of the topology.
var (
	cliAddr4   = netip.MustParseAddr("192.0.2.2")
	gwCliAddr4 = netip.MustParseAddr("192.0.2.1")
	gwMtaAddr4 = netip.MustParseAddr("198.51.100.1")
	mtaAddr4   = netip.MustParseAddr("198.51.100.2")
	cliAddr6   = netip.MustParseAddr("2001:db8:1::2")
	gwCliAddr6 = netip.MustParseAddr("2001:db8:1::1")
	gwMtaAddr6 = netip.MustParseAddr("2001:db8:2::1")
	mtaAddr6   = netip.MustParseAddr("2001:db8:2::2")
)

func TestNetfilter(t *testing.T) {
	tp := newTopology(t)
	mta := startMTA(t, tp)
	d := startProxy(t, tp)

	t.Run("IPv4", func(t *testing.T) {
		checkRelay(t, tp, mta, d, route{
			dst:      netip.AddrPortFrom(mtaAddr4, 25),
			client:   cliAddr4,
			proxy:    netip.AddrPortFrom(gwCliAddr4, proxyPort),
			outgoing: gwMtaAddr4,
		})
	})
	t.Run("IPv6", func(t *testing.T) {
		if !tp.V6 {
			netns.SkipOrFail(t, "IPv6 is disabled on this machine (no /proc/net/if_inet6)")
		}
		// The proxy's lookup must ask SO_ORIGINAL_DST at level SOL_IPV6.
		checkRelay(t, tp, mta, d, route{
			dst:      netip.AddrPortFrom(mtaAddr6, 25),
			client:   cliAddr6,
			proxy:    netip.AddrPortFrom(gwCliAddr6, proxyPort),
			outgoing: gwMtaAddr6,
		})
	})
	t.Run("LoopAvoidance", func(t *testing.T) {
		checkLoop(t, tp, mta, d, netip.AddrPortFrom(gwCliAddr4, proxyPort))
	})
	t.Run("LoopAvoidanceIPv6", func(t *testing.T) {
		if !tp.V6 {
			netns.SkipOrFail(t, "IPv6 is disabled on this machine (no /proc/net/if_inet6)")
		}
		checkLoop(t, tp, mta, d, netip.AddrPortFrom(gwCliAddr6, proxyPort))
	})
	t.Run("WorkersNotRoot", func(t *testing.T) {
		checkWorkersNotRoot(t, d.Pid())
	})

	// A clean stop: TERM, exit status 0, no process left behind (the
	// harness's cleanup would SIGKILL whatever is left, hiding a hang).
	// Pidfds taken before the stop name exactly these processes, even
	// once they are reparented or their pids reused.
	var kids []pidfd
	for _, pid := range harness.Descendants(d.Pid()) {
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			kids = append(kids, pidfd{pid, fd, procCmdline(pid)})
		}
	}
	if code := d.Stop(t); code != 0 {
		t.Errorf("smtp-gated exited with status %d after SIGTERM, want 0", code)
	}
	for _, k := range kids {
		if err := k.wait(10 * time.Second); err != nil {
			t.Errorf("child %d of smtp-gated (%q): %v", k.pid, k.cmdline, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Network namespaces

// topology is the three namespaces (test/netns, which removes them and
// what runs in them at the end) and the veth pairs between them.
type topology struct {
	*netns.Topology
	cli, gw, mta   string // namespace names
	cliIf, gwCliIf string // the CLI–GW veth pair: end in CLI, end in GW
	gwMtaIf, mtaIf string // the GW–MTA veth pair: end in GW, end in MTA
}

// newTopology builds the namespaces, links, addresses, routes and the
// REDIRECT rules; netns.New registers their removal with t.Cleanup (also
// when the set-up fails half-way).
func newTopology(t *testing.T) *topology {
	t.Helper()
	pid := os.Getpid()
	tp := &topology{
		Topology: netns.New(t, nsPrefix),
		cliIf:    fmt.Sprintf("cli%d", pid), // at most 10 characters of IFNAMSIZ's 15
		gwCliIf:  fmt.Sprintf("gwc%d", pid),
		gwMtaIf:  fmt.Sprintf("gwm%d", pid),
		mtaIf:    fmt.Sprintf("mta%d", pid),
	}
	ns := tp.Add("cli", "gw", "mta")
	tp.cli, tp.gw, tp.mta = ns[0], ns[1], ns[2]

	// GW routes between CLI and MTA.
	tp.Sysctl(tp.gw, "net.ipv4.ip_forward", "1")
	if tp.V6 {
		tp.Sysctl(tp.gw, "net.ipv6.conf.all.forwarding", "1")
	}

	// The veth pairs are born in GW with their peer end directly in the
	// other namespace: nothing ever appears in the machine's own namespace.
	tp.Veth(tp.gw, tp.gwCliIf, tp.cli, tp.cliIf)
	tp.Veth(tp.gw, tp.gwMtaIf, tp.mta, tp.mtaIf)
	t.Cleanup(func() {
		// Deleting one end of a veth pair deletes both. Explicit, so the
		// links are gone now even if something still pins a namespace.
		for _, dev := range []string{tp.gwCliIf, tp.gwMtaIf} {
			exec.Command(tp.IP, "-n", tp.gw, "link", "del", dev).Run()
		}
	})

	// IPv6 addresses without duplicate address detection, each waited for
	// until it leaves the tentative state.
	for _, a := range []struct {
		ns, dev string
		v4, v6  netip.Addr
	}{
		{tp.cli, tp.cliIf, cliAddr4, cliAddr6},
		{tp.gw, tp.gwCliIf, gwCliAddr4, gwCliAddr6},
		{tp.gw, tp.gwMtaIf, gwMtaAddr4, gwMtaAddr6},
		{tp.mta, tp.mtaIf, mtaAddr4, mtaAddr6},
	} {
		tp.Addr(a.ns, a.dev, a.v4, 24)
		if tp.V6 {
			tp.Addr(a.ns, a.dev, a.v6, 64)
		}
	}
	tp.Run("ip", "-n", tp.cli, "route", "add", "default", "via", gwCliAddr4.String())
	tp.Run("ip", "-n", tp.mta, "route", "add", "default", "via", gwMtaAddr4.String())
	if tp.V6 {
		tp.Run("ip", "-n", tp.cli, "-6", "route", "add", "default", "via", gwCliAddr6.String())
		tp.Run("ip", "-n", tp.mta, "-6", "route", "add", "default", "via", gwMtaAddr6.String())
	}

	// The transparent part: SMTP from CLI goes to the proxy instead.
	tools := []string{"iptables"}
	if tp.V6 {
		tools = append(tools, "ip6tables")
	}
	for _, tool := range tools {
		tp.Exec(tp.gw, tool, "-w", "-t", "nat", "-A", "PREROUTING",
			"-i", tp.gwCliIf, "-p", "tcp", "--dport", "25", "-j", "REDIRECT", "--to-ports", strconv.Itoa(proxyPort))
	}
	return tp
}

// dialFrom connects from namespace ns to addr.
func dialFrom(t *testing.T, ns string, addr netip.AddrPort) *client {
	t.Helper()
	conn := netns.Dial(t, ns, netip.Addr{}, addr)
	return &client{conn: conn, r: bufio.NewReader(conn)}
}

// ---------------------------------------------------------------------------
// The MTA

// mtaServer is a minimal SMTP server in the MTA namespace that records each
// session.
type mtaServer struct {
	greeting  string // the text of its 220 line
	lns       []net.Listener
	accepted  atomic.Int32
	sessions  chan *mtaSession
	wg        sync.WaitGroup
	mu        sync.Mutex
	openConns map[net.Conn]bool
}

// mtaSession is what the MTA saw of one connection.
type mtaSession struct {
	remote, local netip.AddrPort
	received      []byte // every byte read from the connection
	sent          []byte // every byte written to it
	data          []byte // the DATA lines as on the wire, without the final ".\r\n"
	body          []byte // data, dot-unstuffed
	quit          bool   // the session ended with QUIT
	err           error  // why it ended otherwise
}

func startMTA(t *testing.T, tp *topology) *mtaServer {
	t.Helper()
	s := &mtaServer{
		greeting:  mtaName + " ESMTP nf-test greeting " + randomHex(t),
		sessions:  make(chan *mtaSession, 16),
		openConns: map[net.Conn]bool{},
	}
	addrs := []netip.Addr{mtaAddr4}
	if tp.V6 {
		addrs = append(addrs, mtaAddr6)
	}
	t.Cleanup(s.close)
	for _, a := range addrs {
		ln := netns.Listen(t, tp.mta, "tcp", netip.AddrPortFrom(a, 25).String())
		s.lns = append(s.lns, ln)
		s.wg.Add(1)
		go s.acceptLoop(ln)
	}
	return s
}

func (s *mtaServer) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.mu.Lock()
		s.openConns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sess := s.serve(c)
			c.Close()
			s.mu.Lock()
			delete(s.openConns, c)
			s.mu.Unlock()
			select {
			case s.sessions <- sess:
			default: // nobody is looking: a test already failed
			}
		}()
	}
}

func (s *mtaServer) close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Lock()
	for c := range s.openConns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// next returns the next session that ended.
func (s *mtaServer) next(t *testing.T) *mtaSession {
	t.Helper()
	select {
	case sess := <-s.sessions:
		return sess
	case <-time.After(ioTimeout):
		t.Fatalf("the MTA saw no (complete) session within %v (connections accepted so far: %d)", ioTimeout, s.accepted.Load())
		return nil
	}
}

// serve speaks the smallest SMTP that takes a message.
func (s *mtaServer) serve(c net.Conn) *mtaSession {
	sess := &mtaSession{}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		sess.remote = netip.AddrPortFrom(a.AddrPort().Addr().Unmap(), a.AddrPort().Port())
	}
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		sess.local = netip.AddrPortFrom(a.AddrPort().Addr().Unmap(), a.AddrPort().Port())
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	var rec bytes.Buffer
	r := bufio.NewReader(io.TeeReader(c, &rec))
	defer func() { sess.received = rec.Bytes() }()
	send := func(reply string) bool {
		sess.sent = append(sess.sent, reply...)
		if _, err := io.WriteString(c, reply); err != nil {
			sess.err = err
			return false
		}
		return true
	}
	if !send("220 " + s.greeting + "\r\n") {
		return sess
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			sess.err = fmt.Errorf("reading a command: %w", err)
			return sess
		}
		verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		var reply string
		switch strings.ToUpper(verb) {
		case "EHLO":
			reply = "250-" + mtaName + "\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
		case "HELO":
			reply = "250 " + mtaName + "\r\n"
		case "MAIL", "RCPT", "RSET", "NOOP":
			reply = "250 2.0.0 OK\r\n"
		case "QUIT":
			sess.quit = true
			send("221 2.0.0 " + mtaName + " closing\r\n")
			return sess
		case "DATA":
			if !send("354 End data with <CR><LF>.<CR><LF>\r\n") {
				return sess
			}
			for {
				dl, err := r.ReadString('\n')
				if err != nil {
					sess.err = fmt.Errorf("reading DATA: %w", err)
					return sess
				}
				if dl == ".\r\n" {
					break
				}
				sess.data = append(sess.data, dl...)
				sess.body = append(sess.body, strings.TrimPrefix(dl, ".")...)
			}
			reply = "250 2.0.0 OK queued as NF1\r\n"
		default:
			reply = "502 5.5.2 Command not implemented\r\n"
		}
		if !send(reply) {
			return sess
		}
	}
}

// ---------------------------------------------------------------------------
// The client

// client is the test's SMTP client; it records everything that went each way.
type client struct {
	conn      net.Conn
	r         *bufio.Reader
	sent, got bytes.Buffer
}

func (c *client) localAddr() netip.AddrPort {
	a := c.conn.LocalAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func (c *client) write(t *testing.T, b []byte) {
	t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	c.sent.Write(b)
	if _, err := c.conn.Write(b); err != nil {
		t.Fatalf("client write %.60q: %v", b, err)
	}
}

// reply reads one complete reply (multi-line too) and returns it raw.
func (c *client) reply(t *testing.T) (int, string) {
	t.Helper()
	var raw strings.Builder
	for {
		c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
		line, err := c.r.ReadString('\n')
		c.got.WriteString(line)
		raw.WriteString(line)
		if err != nil {
			t.Fatalf("client: reading a reply: %v (got %q)", err, raw.String())
		}
		if len(line) < 4 || (line[3] != ' ' && line[3] != '-' && line[3] != '\r') {
			t.Fatalf("client: malformed reply line %q", line)
		}
		if line[3] != '-' {
			code, err := strconv.Atoi(line[:3])
			if err != nil {
				t.Fatalf("client: malformed reply line %q", line)
			}
			return code, raw.String()
		}
	}
}

// cmd sends one command line and checks the reply's code.
func (c *client) cmd(t *testing.T, line string, want int) string {
	t.Helper()
	c.write(t, []byte(line+"\r\n"))
	code, raw := c.reply(t)
	if code != want {
		t.Fatalf("client: %q got %q, want a %d reply", line, raw, want)
	}
	return raw
}

// rest reads until the connection ends and returns what came.
func (c *client) rest(t *testing.T) []byte {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(c.r)
	c.got.Write(b)
	if err != nil {
		t.Fatalf("client: waiting for the end of the connection: %v (got %q)", err, b)
	}
	return b
}

// ---------------------------------------------------------------------------
// The checks

// route is one way through the gateway.
type route struct {
	dst      netip.AddrPort // where the client connects (the MTA)
	client   netip.Addr     // the client's address
	proxy    netip.AddrPort // where REDIRECT delivers it: GW's address towards CLI, proxy port
	outgoing netip.Addr     // GW's address towards the MTA: the source the MTA sees
}

// checkRelay runs one SMTP transaction from CLI to the MTA through the
// REDIRECT and the proxy.
func checkRelay(t *testing.T, tp *topology, mta *mtaServer, d *harness.Daemon, rt route) {
	mark := d.Mark()
	before := mta.accepted.Load()
	c := dialFrom(t, tp.cli, rt.dst)
	src := c.localAddr()
	if src.Addr() != rt.client {
		t.Fatalf("client's source address is %v, want %v", src.Addr(), rt.client)
	}

	token := randomHex(t)
	msg := testMessage(token)
	stuffed := dotStuff(msg)

	if code, greet := c.reply(t); code != 220 || greet != "220 "+mta.greeting+"\r\n" {
		t.Fatalf("greeting %q, want the MTA's %q", greet, "220 "+mta.greeting+"\r\n")
	}
	if ehlo := c.cmd(t, "EHLO client.nf-test.example", 250); !strings.HasPrefix(ehlo, "250-"+mtaName+"\r\n") {
		t.Errorf("EHLO reply %q, want the MTA's (starting %q)", ehlo, "250-"+mtaName)
	}
	c.cmd(t, "MAIL FROM:<sender@client.nf-test.example>", 250)
	c.cmd(t, "RCPT TO:<rcpt@mta.nf-test.example>", 250)
	c.cmd(t, "DATA", 354)
	c.write(t, stuffed)
	if code, raw := c.reply(t); code != 250 || !strings.Contains(raw, "queued as NF1") {
		t.Fatalf("end of DATA got %q, want the MTA's 250 ... queued as NF1", raw)
	}
	c.cmd(t, "QUIT", 221)
	if extra := c.rest(t); len(extra) > 0 {
		t.Errorf("client got %q after the 221, want the end of the connection", extra)
	}

	sess := mta.next(t)
	if sess.err != nil || !sess.quit {
		t.Errorf("MTA session ended with %v (quit=%v), want a QUIT", sess.err, sess.quit)
	}
	if sess.local != rt.dst {
		t.Errorf("MTA accepted the connection on %v, want %v (the original destination)", sess.local, rt.dst)
	}
	// Mode netfilter does not spoof: the MTA sees the gateway.
	if sess.remote.Addr() != rt.outgoing {
		t.Errorf("MTA saw the connection from %v, want the gateway's %v", sess.remote, rt.outgoing)
	}
	if !bytes.Equal(sess.data, stuffed[:len(stuffed)-3]) {
		t.Errorf("DATA on the MTA's wire differs from what the client sent:\n got %d bytes, first difference at %d\nwant %d bytes",
			len(sess.data), firstDiff(sess.data, stuffed), len(stuffed)-3)
	}
	for _, want := range []string{"\r\n..starts with a dot " + token + "\r\n", "\r\n..\r\n", "\r\n...two dots\r\n"} {
		if !bytes.Contains(sess.data, []byte(want)) {
			t.Errorf("the MTA's wire lacks the dot-stuffed line %q", want)
		}
	}
	if !bytes.Equal(sess.body, msg) {
		t.Errorf("message the MTA got (unstuffed, %d bytes) differs from the one sent (%d bytes) at byte %d",
			len(sess.body), len(msg), firstDiff(sess.body, msg))
	}
	if !bytes.Equal(sess.received, c.sent.Bytes()) {
		t.Errorf("the MTA received %d bytes, the client sent %d: they differ at byte %d",
			len(sess.received), c.sent.Len(), firstDiff(sess.received, c.sent.Bytes()))
	}
	if !bytes.Equal(c.got.Bytes(), sess.sent) {
		t.Errorf("the client received %q,\nthe MTA sent %q", c.got.Bytes(), sess.sent)
	}
	if n := mta.accepted.Load() - before; n != 1 {
		t.Errorf("MTA accepted %d connections for one session, want 1", n)
	}

	id, on := newLine(t, d, mark, src)
	if on != rt.proxy.String() {
		t.Errorf("NEW line says on=%s, want %v (the REDIRECT target)", on, rt.proxy)
	}
	closeRe := regexp.MustCompile(`\bCLOSE by=([^,]+), rcv=(\d+)/(\d+), .*` + harness.CloseSrc(src.String()) + ` id=` + id + `\s*$`)
	line := d.WaitLogAfter(t, mark, closeRe, ioTimeout)
	m := closeRe.FindStringSubmatch(line)
	if m[2] != strconv.Itoa(c.sent.Len()) || m[3] != strconv.Itoa(c.got.Len()) {
		t.Errorf("CLOSE says rcv=%s/%s, want %d/%d (bytes from the client/from the server)\n%s",
			m[2], m[3], c.sent.Len(), c.got.Len(), line)
	}
	switch m[1] {
	case "client", "server", "quit":
	default:
		t.Errorf("CLOSE says by=%s after a QUIT, want the end of a normal session\n%s", m[1], line)
	}
}

// newLine waits for the NEW line of the connection from src and returns
// its id and on= value.
func newLine(t *testing.T, d *harness.Daemon, mark harness.Mark, src netip.AddrPort) (id, on string) {
	t.Helper()
	re := regexp.MustCompile(`\bNEW \(\d+/\d+\) on=([^,]+), src=` + regexp.QuoteMeta(src.String()) + `, .*\bid=(\d+)\s*$`)
	m := re.FindStringSubmatch(d.WaitLogAfter(t, mark, re, ioTimeout))
	return m[2], m[1]
}

// checkLoop connects from CLI straight to the proxy's own address: no
// REDIRECT, so the original destination is the proxy itself, which it must
// refuse instead of connecting to itself.
func checkLoop(t *testing.T, tp *topology, mta *mtaServer, d *harness.Daemon, proxy netip.AddrPort) {
	mark := d.Mark()
	before := mta.accepted.Load()
	c := dialFrom(t, tp.cli, proxy)
	src := c.localAddr()
	got := string(c.rest(t))
	want := fmt.Sprintf("554 %s %s\r\n", proxyName, loopText)
	if got != want {
		t.Errorf("a client connecting to the proxy itself got %q, want %q", got, want)
	}
	id, on := newLine(t, d, mark, src)
	if on != proxy.String() {
		t.Errorf("NEW line says on=%s, want %v", on, proxy)
	}
	closeRe := regexp.MustCompile(`\bCLOSE by=([^,]+), .*` + harness.CloseSrc(src.String()) + ` id=` + id + `\s*$`)
	if line := d.WaitLogAfter(t, mark, closeRe, ioTimeout); closeRe.FindStringSubmatch(line)[1] != "loop" {
		t.Errorf("CLOSE line of the connection to the proxy itself does not say by=loop:\n%s", line)
	}
	loopRe := regexp.MustCompile(`(?i)\bavoid(ing|ed)? (a )?loop\b`)
	found := false
	for _, l := range d.LogSince(mark) {
		if loopRe.MatchString(l) {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line says the loop was avoided; log since the connection:\n%s", strings.Join(d.LogSince(mark), "\n"))
	}
	// The session is over (CLOSE logged): any connection it made would
	// have been accepted by now.
	if n := mta.accepted.Load() - before; n != 0 {
		t.Errorf("the MTA accepted %d connections during the loop test, want none", n)
	}
}

// checkWorkersNotRoot reads the credentials of the daemon's children from
// /proc: session workers (and lookup, which asks SO_ORIGINAL_DST) must run
// as set_user nobody, in every thread.
func checkWorkersNotRoot(t *testing.T, master int) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	roles := map[string][]int{}
	for _, pid := range childPids(master) {
		args := strings.Split(strings.TrimRight(procCmdline(pid), "\x00"), "\x00")
		if len(args) == 3 && args[1] == "-child" {
			roles[args[2]] = append(roles[args[2]], pid)
		}
	}
	if n := len(roles["session"]); n != 2 {
		t.Errorf("smtp-gated (pid %d) has %d session workers, want 2 (session_workers 2); children by role: %v", master, n, roles)
	}
	if len(roles["lookup"]) != 1 {
		t.Errorf("smtp-gated (pid %d) has %d lookup processes, want 1; children by role: %v", master, len(roles["lookup"]), roles)
	}
	for _, role := range []string{"session", "lookup"} {
		for _, pid := range roles[role] {
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				t.Errorf("%s %d: %v", role, pid, err)
				continue
			}
			for _, task := range tasks {
				st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
				if err != nil {
					t.Errorf("%s %d task %s: %v", role, pid, task.Name(), err)
					continue
				}
				uids, gids, groups := statusField(st, "Uid"), statusField(st, "Gid"), statusField(st, "Groups")
				if len(uids) != 4 {
					t.Errorf("%s %d task %s: malformed Uid line %q", role, pid, task.Name(), uids)
				}
				for _, u := range uids {
					if u != nobody.Uid {
						t.Errorf("%s %d task %s: Uid %v, want %s (nobody) in all four", role, pid, task.Name(), uids, nobody.Uid)
						break
					}
				}
				for _, g := range append(gids, groups...) {
					if g == "0" {
						t.Errorf("%s %d task %s: Gid %v, Groups %v: still in group 0", role, pid, task.Name(), gids, groups)
						break
					}
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// The daemon

// startProxy runs `ip netns exec GW smtp-gated -f CONFIG` through the
// harness (which builds the binary, waits for READY=1, collects the log and
// kills whatever is left at the end).
func startProxy(t *testing.T, tp *topology) *harness.Daemon {
	t.Helper()
	bin := harness.DaemonBinary(t)
	// netns adds the daemon's files (in a directory its unprivileged
	// children can traverse), set_user nobody, log_level debug and
	// max_load 0, so this machine's load cannot turn the test's
	// connections away.
	d, _ := tp.StartDaemon(t, tp.gw, fmt.Sprintf(`# netfilter end-to-end test
mode netfilter
proxy_name %s
bind_address ::
port %d
session_workers 2
# The MTA must get the message exactly as the client sent it.
nat_header_type none
msg_loop_avoidance "%s"
`, proxyName, proxyPort, loopText))
	// The wrapper and ip executed smtp-gated in place: the harness's pid is
	// the master's.
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", d.Pid())); err != nil || exe != bin {
		t.Fatalf("pid %d runs %q (%v), want the smtp-gated binary %s", d.Pid(), exe, err, bin)
	}
	return d
}

// ---------------------------------------------------------------------------
// Helpers

// testMessage is a message with the lines dot-stuffing is about: one
// starting with a dot, one that is a lone dot, one starting with two; and
// enough lines (about 100 kB) to cross many relay buffers.
func testMessage(token string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <sender@client.nf-test.example>\r\n")
	fmt.Fprintf(&b, "To: <rcpt@mta.nf-test.example>\r\n")
	fmt.Fprintf(&b, "Subject: netfilter test %s\r\n", token)
	fmt.Fprintf(&b, "Message-ID: <%s@client.nf-test.example>\r\n", token)
	fmt.Fprintf(&b, "\r\n")
	fmt.Fprintf(&b, "First line of the body.\r\n")
	fmt.Fprintf(&b, ".starts with a dot %s\r\n", token)
	fmt.Fprintf(&b, ".\r\n")
	fmt.Fprintf(&b, "..two dots\r\n")
	fmt.Fprintf(&b, " leading and trailing blanks \t\r\n")
	fmt.Fprintf(&b, "\r\n")
	for i := range 1500 {
		if i%100 == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "line %04d of %s: the quick brown fox jumps over the lazy dog\r\n", i, token)
	}
	fmt.Fprintf(&b, "last line %s\r\n", token)
	return b.Bytes()
}

// dotStuff returns msg (CRLF lines) as DATA's payload, with the final
// ".\r\n".
func dotStuff(msg []byte) []byte {
	var out []byte
	for line := range bytes.Lines(msg) {
		if line[0] == '.' {
			out = append(out, '.')
		}
		out = append(out, line...)
	}
	return append(out, ".\r\n"...)
}

func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

func randomHex(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// childPids lists the live processes whose parent is pid, from /proc.
func childPids(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		if pp := statusField(st, "PPid"); len(pp) == 1 && pp[0] == strconv.Itoa(pid) {
			if s := statusField(st, "State"); len(s) > 0 && (s[0] == "Z" || s[0] == "X") {
				continue
			}
			out = append(out, p)
		}
	}
	return out
}

// statusField returns the fields of the "Name:" line of a /proc status file.
func statusField(status []byte, name string) []string {
	for line := range strings.SplitSeq(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			return strings.Fields(v)
		}
	}
	return nil
}

func procCmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return string(b)
}

// pidfd is a process of the daemon, watched through a pidfd (it is not a
// child of this test, so it cannot be waited for).
type pidfd struct {
	pid     int
	fd      int
	cmdline string
}

// wait waits until the process has exited (the pidfd becomes readable),
// and closes the pidfd.
func (p pidfd) wait(timeout time.Duration) error {
	defer unix.Close(p.fd)
	deadline := time.Now().Add(timeout)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms <= 0 {
			return fmt.Errorf("still running %v after the daemon stopped", timeout)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return nil
		}
	}
}
