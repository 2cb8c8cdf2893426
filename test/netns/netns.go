//go:build linux

// Package netns builds network topologies for end-to-end tests: network
// namespaces, veth links, addresses, routes and firewall rules, all made
// and removed by the test (root only), and helpers to open sockets and run
// the daemon inside them. It follows test/netfilter's approach: sockets are
// opened from an OS thread that joined the namespace (setns), so the test
// needs no helper process; the daemon runs under `ip netns exec`.
package netns

import (
	"errors"
	"fmt"
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
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/test/harness"
)

// SkipOrFail skips the test, or fails it with SMTPGATED_REQUIRE_PEERS=1.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(harness.EnvRequirePeers) == "1" {
		t.Fatalf("%s (and %s=1)", reason, harness.EnvRequirePeers)
	}
	t.Skipf("%s (set %s=1 to fail instead of skipping)", reason, harness.EnvRequirePeers)
}

// LookSbin is exec.LookPath that also looks in the sbin directories.
func LookSbin(name string) (string, error) {
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

// Topology is the namespaces of one test.
type Topology struct {
	t       testing.TB
	prefix  string
	IP      string // path of ip(8)
	Ipt     string // iptables
	Ip6t    string // ip6tables
	V6      bool   // the machine has IPv6
	created []string
}

// New checks the requirements (root, ip, iptables, ip6tables), removes
// what a killed earlier run with the same prefix left behind, and
// registers the removal of everything it will create. prefix starts the
// namespace names: prefix + pid + "-" + name.
func New(t testing.TB, prefix string) *Topology {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "this test needs root (network namespaces, iptables)")
	}
	tp := &Topology{t: t, prefix: prefix}
	var missing []string
	for _, x := range []struct {
		p    *string
		name string
	}{{&tp.IP, "ip"}, {&tp.Ipt, "iptables"}, {&tp.Ip6t, "ip6tables"}} {
		p, err := LookSbin(x.name)
		if err != nil {
			missing = append(missing, x.name)
		}
		*x.p = p
	}
	if len(missing) > 0 {
		SkipOrFail(t, "this test needs "+strings.Join(missing, ", ")+" (apt-get install iproute2 iptables)")
	}
	_, err := os.Stat("/proc/net/if_inet6")
	tp.V6 = err == nil
	tp.sweepStale()
	t.Cleanup(tp.teardown)
	return tp
}

// Name is the full name of namespace name.
func (tp *Topology) Name(name string) string {
	return fmt.Sprintf("%s%d-%s", tp.prefix, os.Getpid(), name)
}

// Add creates namespaces (lo up in each) and returns their full names.
func (tp *Topology) Add(names ...string) []string {
	tp.t.Helper()
	var out []string
	for _, n := range names {
		ns := tp.Name(n)
		if o, err := tp.run(tp.IP, "netns", "add", ns); err != nil {
			if len(tp.created) == 0 {
				SkipOrFail(tp.t, fmt.Sprintf("cannot create a network namespace here: %v: %s", err, o))
			}
			tp.t.Fatalf("ip netns add %s: %v: %s", ns, err, o)
		}
		tp.created = append(tp.created, ns)
		tp.Run("ip", "-n", ns, "link", "set", "lo", "up")
		out = append(out, ns)
	}
	return out
}

// Run runs a tool ("ip", "iptables", "ip6tables" or a path) and fails
// the test on error.
func (tp *Topology) Run(tool string, args ...string) string {
	tp.t.Helper()
	bin := map[string]string{"ip": tp.IP, "iptables": tp.Ipt, "ip6tables": tp.Ip6t}[tool]
	if bin == "" {
		bin = tool
	}
	out, err := tp.run(bin, args...)
	if err != nil {
		tp.t.Fatalf("%s %s: %v: %s", tool, strings.Join(args, " "), err, out)
	}
	return out
}

// Exec runs tool inside namespace ns (ip netns exec).
func (tp *Topology) Exec(ns, tool string, args ...string) string {
	tp.t.Helper()
	bin := map[string]string{"ip": tp.IP, "iptables": tp.Ipt, "ip6tables": tp.Ip6t}[tool]
	if bin == "" {
		bin = tool
	}
	return tp.Run("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
}

func (tp *Topology) run(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

// Veth links namespaces a and b: interface ifA in a, ifB in b (at most
// 15 characters each), both up.
func (tp *Topology) Veth(a, ifA, b, ifB string) {
	tp.t.Helper()
	tp.Run("ip", "-n", a, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b)
	tp.Run("ip", "-n", a, "link", "set", ifA, "up")
	tp.Run("ip", "-n", b, "link", "set", ifB, "up")
}

// Addr adds address a/bits to dev in ns (IPv6 without duplicate address
// detection) and, for IPv6, waits until it is usable.
func (tp *Topology) Addr(ns, dev string, a netip.Addr, bits int) {
	tp.t.Helper()
	pfx := netip.PrefixFrom(a, bits).String()
	if a.Is4() {
		tp.Run("ip", "-n", ns, "addr", "add", pfx, "dev", dev)
		return
	}
	tp.Run("ip", "-n", ns, "addr", "add", pfx, "dev", dev, "nodad")
	// Even a nodad address stays tentative until IPv6 sees its link
	// ready, which the kernel learns asynchronously: poll, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := tp.run(tp.IP, "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "tentative")
		if err == nil && !strings.Contains(out, a.String()+"/") {
			return
		}
		if time.Now().After(deadline) {
			tp.t.Fatalf("%s on %s in %s still tentative after 10 s", a, dev, ns)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Sysctl writes a net.* sysctl of namespace ns and checks it took.
// /proc/sys/net shows the namespace of the thread that looks, so a thread
// inside ns writes it.
func (tp *Topology) Sysctl(ns, key, value string) {
	tp.t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	err := In(ns, func() error {
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
	if err != nil {
		tp.t.Fatalf("sysctl %s=%s in %s: %v", key, value, ns, err)
	}
}

// In runs f on an OS thread that joined namespace ns; sockets f opens stay
// in ns. The thread goes back afterwards; if it cannot, it stays locked
// and the runtime discards it.
func In(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
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
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dial connects from ns to addr, from laddr when it is valid.
func Dial(t testing.TB, ns string, laddr netip.Addr, addr netip.AddrPort) net.Conn {
	t.Helper()
	var conn net.Conn
	err := In(ns, func() error {
		d := net.Dialer{Timeout: 15 * time.Second}
		if laddr.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(laddr, 0))
		}
		for attempt := 1; ; attempt++ {
			var err error
			conn, err = d.Dial("tcp", addr.String())
			if err == nil || attempt == 5 || !(errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)) {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err != nil {
		t.Fatalf("dial %v from %v in %s: %v", addr, laddr, ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Listen listens on addr in ns.
func Listen(t testing.TB, ns, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := In(ns, func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// StartDaemon runs smtp-gated in ns through the harness, with its files
// in a fresh directory dir that the unprivileged children can reach;
// config may use @DIR@ for dir. set_user nobody chroots lookup and the
// session workers.
func (tp *Topology) StartDaemon(t testing.TB, ns, config string, opts ...harness.Option) (*harness.Daemon, string) {
	t.Helper()
	bin := harness.DaemonBinary(t)
	dir, err := os.MkdirTemp("", tp.prefix+"-")
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
	wrapper := filepath.Join(dir, "in-ns")
	script := fmt.Sprintf("#!/bin/sh\nexec %s netns exec %s %s \"$@\"\n", shQuote(tp.IP), shQuote(ns), shQuote(bin))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`pidfile %[1]s/pid
control_socket %[1]s/ctl.sock
statefile %[1]s/state
spool_path %[1]s/spool
lock_path %[1]s/lock
ratelimit_path %[1]s/ratelimit
set_user nobody
log_level debug
max_load 0
`, dir) + strings.ReplaceAll(config, "@DIR@", dir)
	opts = append([]harness.Option{harness.WithBinary(wrapper), harness.WithEnv("TMPDIR=" + dir)}, opts...)
	return harness.StartDaemon(t, conf, opts...), dir
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// teardown removes the namespaces; a process still in one of them is a
// leak of the test: reported, then killed.
func (tp *Topology) teardown() {
	for _, ns := range tp.created {
		for _, pid := range tp.nsPids(ns) {
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil && !zombie(pid) {
				time.Sleep(20 * time.Millisecond)
			}
			if syscall.Kill(pid, 0) == nil && !zombie(pid) {
				tp.t.Errorf("process %d still running in namespace %s at the end of the test: killing it", pid, ns)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	for _, ns := range tp.created {
		if out, err := tp.run(tp.IP, "netns", "del", ns); err != nil {
			tp.t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			tp.t.Errorf("namespace %s still exists after ip netns del", ns)
		}
	}
	tp.created = nil
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

func (tp *Topology) nsPids(ns string) []int {
	out, _ := tp.run(tp.IP, "netns", "pids", ns)
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sweepStale removes namespaces of this prefix whose test binary is gone.
func (tp *Topology) sweepStale() {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(tp.prefix) + `(\d+)-\w+$`)
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m := re.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		owner, _ := strconv.Atoi(m[1])
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", owner)); err == nil {
			continue
		}
		for _, pid := range tp.nsPids(e.Name()) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		tp.run(tp.IP, "netns", "del", e.Name())
	}
}
