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
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/test/harness"
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
	ipBin, iptBin, ip6tBin := requirements(t)
	tp := newTopology(t, ipBin, iptBin, ip6tBin)
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
		if !tp.v6 {
			skipOrFail(t, "IPv6 is disabled on this machine (no /proc/net/if_inet6)")
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
		if !tp.v6 {
			skipOrFail(t, "IPv6 is disabled on this machine (no /proc/net/if_inet6)")
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

// requirements skips the test (or fails it with SMTPGATED_REQUIRE_PEERS=1)
// when it cannot run here, and returns the paths of ip, iptables, ip6tables.
func requirements(t *testing.T) (ipBin, iptBin, ip6tBin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "the netfilter test needs root (network namespaces, iptables)")
	}
	var missing []string
	paths := map[string]string{}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		p, err := lookSbin(tool)
		if err != nil {
			missing = append(missing, tool)
		}
		paths[tool] = p
	}
	if len(missing) > 0 {
		skipOrFail(t, "the netfilter test needs "+strings.Join(missing, ", ")+" (apt-get install iproute2 iptables)")
	}
	return paths["ip"], paths["iptables"], paths["ip6tables"]
}

func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv(harness.EnvRequirePeers) == "1" {
		t.Fatalf("%s (and %s=1)", reason, harness.EnvRequirePeers)
	}
	t.Skipf("%s (set %s=1 to fail instead of skipping)", reason, harness.EnvRequirePeers)
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

// ---------------------------------------------------------------------------
// Network namespaces

// inNetns runs f on an OS thread that joined the network namespace
// /run/netns/<ns>. Sockets f opens stay in that namespace for their whole
// life, whichever thread uses them later. The thread goes back to the
// original namespace afterwards; if that fails it stays locked, and the Go
// runtime ends a thread whose goroutine exits locked, so no goroutine ever
// runs in the wrong namespace. (Threads the runtime creates while a
// goroutine is locked come from its template thread, not from this one.)
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", ns, err)
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("back from network namespace %s: %w (thread discarded)", ns, err))
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// topology is the three namespaces and the veth pairs between them.
type topology struct {
	ipBin, iptBin, ip6tBin string
	cli, gw, mta           string // namespace names
	cliIf, gwCliIf         string // the CLI–GW veth pair: end in CLI, end in GW
	gwMtaIf, mtaIf         string // the GW–MTA veth pair: end in GW, end in MTA
	v6                     bool   // the machine has IPv6
	created                []string
}

// newTopology builds the namespaces, links, addresses, routes and the
// REDIRECT rules, and registers their removal with t.Cleanup (also when the
// set-up fails half-way).
func newTopology(t *testing.T, ipBin, iptBin, ip6tBin string) *topology {
	t.Helper()
	pid := os.Getpid()
	tp := &topology{
		ipBin: ipBin, iptBin: iptBin, ip6tBin: ip6tBin,
		cli:     fmt.Sprintf("%s%d-cli", nsPrefix, pid),
		gw:      fmt.Sprintf("%s%d-gw", nsPrefix, pid),
		mta:     fmt.Sprintf("%s%d-mta", nsPrefix, pid),
		cliIf:   fmt.Sprintf("cli%d", pid), // at most 10 characters of IFNAMSIZ's 15
		gwCliIf: fmt.Sprintf("gwc%d", pid),
		gwMtaIf: fmt.Sprintf("gwm%d", pid),
		mtaIf:   fmt.Sprintf("mta%d", pid),
	}
	_, err := os.Stat("/proc/net/if_inet6")
	tp.v6 = err == nil
	tp.sweepStale(t)
	t.Cleanup(func() { tp.teardown(t) })

	for i, ns := range []string{tp.cli, tp.gw, tp.mta} {
		if out, err := tp.run(tp.ipBin, "netns", "add", ns); err != nil {
			if i == 0 {
				skipOrFail(t, fmt.Sprintf("cannot create a network namespace here: %v: %s", err, out))
			}
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		tp.created = append(tp.created, ns)
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := tp.run(tp.ipBin, args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// The veth pairs are born in GW with their peer end directly in the
	// other namespace: nothing ever appears in the machine's own namespace.
	ip("-n", tp.gw, "link", "add", tp.gwCliIf, "type", "veth", "peer", "name", tp.cliIf, "netns", tp.cli)
	ip("-n", tp.gw, "link", "add", tp.gwMtaIf, "type", "veth", "peer", "name", tp.mtaIf, "netns", tp.mta)

	// GW routes between CLI and MTA.
	sysctls := [][2]string{{"net.ipv4.ip_forward", "1"}}
	if tp.v6 {
		sysctls = append(sysctls, [2]string{"net.ipv6.conf.all.forwarding", "1"})
	}
	for _, kv := range sysctls {
		if err := setSysctl(tp.gw, kv[0], kv[1]); err != nil {
			t.Fatalf("sysctl in %s: %v", tp.gw, err)
		}
	}

	for _, ns := range []string{tp.cli, tp.gw, tp.mta} {
		ip("-n", ns, "link", "set", "lo", "up")
	}
	ip("-n", tp.cli, "link", "set", tp.cliIf, "up")
	ip("-n", tp.gw, "link", "set", tp.gwCliIf, "up")
	ip("-n", tp.gw, "link", "set", tp.gwMtaIf, "up")
	ip("-n", tp.mta, "link", "set", tp.mtaIf, "up")

	type ifAddr struct {
		ns, dev string
		v4, v6  netip.Addr
	}
	addrs := []ifAddr{
		{tp.cli, tp.cliIf, cliAddr4, cliAddr6},
		{tp.gw, tp.gwCliIf, gwCliAddr4, gwCliAddr6},
		{tp.gw, tp.gwMtaIf, gwMtaAddr4, gwMtaAddr6},
		{tp.mta, tp.mtaIf, mtaAddr4, mtaAddr6},
	}
	for _, a := range addrs {
		ip("-n", a.ns, "addr", "add", a.v4.String()+"/24", "dev", a.dev)
		if tp.v6 {
			// nodad: usable at once, without the second of duplicate
			// address detection.
			ip("-n", a.ns, "addr", "add", a.v6.String()+"/64", "dev", a.dev, "nodad")
		}
	}
	if tp.v6 {
		// Even a nodad address stays "tentative" until IPv6 sees its link
		// ready, which the kernel learns asynchronously (linkwatch, up to
		// about a second after "link set up"). There is no event to wait
		// for without a netlink listener, so poll, briefly and bounded.
		for _, a := range addrs {
			waitFor(t, fmt.Sprintf("%s on %s in %s to leave the tentative state", a.v6, a.dev, a.ns), 10*time.Second, func() (bool, error) {
				out, err := tp.run(tp.ipBin, "-n", a.ns, "-6", "-o", "addr", "show", "dev", a.dev, "scope", "global", "tentative")
				return err == nil && strings.TrimSpace(out) == "", err
			})
		}
	}
	ip("-n", tp.cli, "route", "add", "default", "via", gwCliAddr4.String())
	ip("-n", tp.mta, "route", "add", "default", "via", gwMtaAddr4.String())
	if tp.v6 {
		ip("-n", tp.cli, "-6", "route", "add", "default", "via", gwCliAddr6.String())
		ip("-n", tp.mta, "-6", "route", "add", "default", "via", gwMtaAddr6.String())
	}

	// The transparent part: SMTP from CLI goes to the proxy instead.
	rules := []string{tp.iptBin}
	if tp.v6 {
		rules = append(rules, tp.ip6tBin)
	}
	for _, bin := range rules {
		args := []string{"netns", "exec", tp.gw, bin, "-w", "-t", "nat", "-A", "PREROUTING",
			"-i", tp.gwCliIf, "-p", "tcp", "--dport", "25", "-j", "REDIRECT", "--to-ports", strconv.Itoa(proxyPort)}
		if out, err := tp.run(tp.ipBin, args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return tp
}

// run runs a command and returns its combined output.
func (tp *topology) run(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

// setSysctl writes a net.* sysctl of namespace ns. /proc/sys/net shows the
// namespace of the thread that looks, so a thread inside ns writes it.
func setSysctl(ns, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return inNetns(ns, func() error {
		if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
			return err
		}
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(got)) != value {
			return fmt.Errorf("%s is %q after writing %q", key, strings.TrimSpace(string(got)), value)
		}
		return nil
	})
}

// teardown removes what newTopology made. The daemon is gone by now
// (its cleanup was registered later, so it ran first); a process still in
// one of the namespaces is a leak of this test: reported, then killed.
func (tp *topology) teardown(t *testing.T) {
	for _, ns := range tp.created {
		for _, pid := range tp.nsPids(ns) {
			// After a failure the harness has just SIGKILLed the
			// daemon's processes: give them a moment to be gone.
			fd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				continue // gone already
			}
			p := pidfd{pid, fd, procCmdline(pid)}
			if p.wait(5*time.Second) == nil {
				continue
			}
			t.Errorf("process %d (%q) still running in namespace %s at the end of the test: killing it", pid, p.cmdline, ns)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if len(tp.created) > 1 {
		// Deleting one end of a veth pair deletes both. Explicit, so the
		// links are gone now even if something still pins a namespace.
		for _, dev := range []string{tp.gwCliIf, tp.gwMtaIf} {
			tp.run(tp.ipBin, "-n", tp.gw, "link", "del", dev)
		}
	}
	for _, ns := range tp.created {
		if out, err := tp.run(tp.ipBin, "netns", "del", ns); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s still exists after ip netns del", ns)
		}
	}
	tp.created = nil
}

// nsPids lists the processes in namespace ns (other than this test).
func (tp *topology) nsPids(ns string) []int {
	out, _ := tp.run(tp.ipBin, "netns", "pids", ns)
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

var staleRe = regexp.MustCompile(`^` + nsPrefix + `(\d+)-(cli|gw|mta)$`)

// sweepStale removes the namespaces of an earlier run of this test that
// died without its cleanup (killed by a go test -timeout, SIGKILL), and the
// processes that run inside them, which that run started.
func (tp *topology) sweepStale(t *testing.T) {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m := staleRe.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		owner, _ := strconv.Atoi(m[1])
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", owner)); err == nil {
			continue // its test binary (or an unrelated process with that pid) is alive: leave it
		}
		t.Logf("removing namespace %s left behind by a dead test binary (pid %d)", e.Name(), owner)
		for _, pid := range tp.nsPids(e.Name()) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if out, err := tp.run(tp.ipBin, "netns", "del", e.Name()); err != nil {
			t.Logf("ip netns del %s: %v: %s", e.Name(), err, out)
		}
	}
}

// waitFor polls cond every 10 ms until it holds, failing the test after
// timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialFrom connects from namespace ns to addr.
func dialFrom(t *testing.T, ns string, addr netip.AddrPort) *client {
	t.Helper()
	var conn net.Conn
	err := inNetns(ns, func() error {
		d := net.Dialer{Timeout: ioTimeout}
		// Addresses and routes are in place before the first dial (the
		// IPv6 ones checked non-tentative), so the first attempt should
		// succeed: ARP and neighbour discovery queue the SYN meanwhile.
		// "Unreachable" can only be a transient of the link coming up;
		// it is retried a few times, 100 ms apart, and logged.
		for attempt := 1; ; attempt++ {
			var err error
			conn, err = d.Dial("tcp", addr.String())
			if err == nil || attempt == 5 ||
				!(errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)) {
				return err
			}
			t.Logf("dial %v from %s (attempt %d): %v; retrying", addr, ns, attempt, err)
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatalf("dial %v from namespace %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
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
	if tp.v6 {
		addrs = append(addrs, mtaAddr6)
	}
	t.Cleanup(s.close)
	for _, a := range addrs {
		var ln net.Listener
		err := inNetns(tp.mta, func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(a, 25).String())
			return err
		})
		if err != nil {
			t.Fatalf("MTA listen on %v: %v", a, err)
		}
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
	closeRe := regexp.MustCompile(`\bCLOSE by=([^,]+), rcv=(\d+)/(\d+), .*\bsrc=` + regexp.QuoteMeta(src.String()) + `, .*\bid=` + id + `\s*$`)
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
	closeRe := regexp.MustCompile(`\bCLOSE by=([^,]+), .*\bsrc=` + regexp.QuoteMeta(src.String()) + `, .*\bid=` + id + `\s*$`)
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
	// The daemon's files: a directory its unprivileged children can
	// traverse, removed after the test.
	dir, err := os.MkdirTemp("", "sgnf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	for _, sub := range []string{"spool", "lock", "ratelimit"} {
		p := filepath.Join(dir, sub)
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// The harness runs BINARY -f CONFIG; this wrapper puts the daemon into
	// GW. ip netns exec executes the command in place, so the pid the
	// harness knows is smtp-gated's master.
	wrapper := filepath.Join(dir, "in-gw")
	script := fmt.Sprintf("#!/bin/sh\nexec %s netns exec %s %s \"$@\"\n", shQuote(tp.ipBin), shQuote(tp.gw), shQuote(bin))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`# netfilter end-to-end test
mode netfilter
proxy_name %s
bind_address ::
port %d
pidfile %s
control_socket %s
statefile %s
spool_path %s
lock_path %s
ratelimit_path %s
session_workers 2
set_user nobody
log_level debug
# This machine's load must not turn the test's connections away.
max_load 0
# The MTA must get the message exactly as the client sent it.
nat_header_type none
msg_loop_avoidance "%s"
`, proxyName, proxyPort, filepath.Join(dir, "pid"), filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "state"),
		filepath.Join(dir, "spool"), filepath.Join(dir, "lock"), filepath.Join(dir, "ratelimit"), loopText)
	// TMPDIR: the empty directory master makes for chroots lands in dir.
	d := harness.StartDaemon(t, conf, harness.WithBinary(wrapper), harness.WithEnv("TMPDIR="+dir))
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

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

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
