//go:build linux

// Package tproxy_test is the end-to-end test of modes tproxy and
// tproxy,netfilter: a client, a gateway running smtp-gated behind an
// iptables/ip6tables TPROXY rule with policy routing (the manual's
// recipe), and an MTA, each in a network namespace the test creates.
//
//	CLI  192.0.2.2 10.1.0.2 2001:db8:1::2 ──veth── 192.0.2.1 10.1.0.1 2001:db8:1::1  GW
//	GW   198.51.100.1       2001:db8:2::1 ──veth── 198.51.100.2      2001:db8:2::2   MTA
//
// In mode tproxy the MTA must see the connection coming from the client's
// own address and port. In mode tproxy,netfilter a client with a private
// address (10.1.0.2, REDIRECTed by the nat table) is relayed from the
// gateway's address, and a public one (192.0.2.2, the documentation
// range standing for "routable") is tproxied.
package tproxy_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
	"smtp-gated/test/netns"
)

func TestMain(m *testing.M) { harness.Main(m) }

const proxyPort = 9199

var (
	cli4    = netip.MustParseAddr("192.0.2.2")
	cliPriv = netip.MustParseAddr("10.1.0.2")
	cli6    = netip.MustParseAddr("2001:db8:1::2")
	gwCli4  = netip.MustParseAddr("192.0.2.1")
	gwPriv  = netip.MustParseAddr("10.1.0.1")
	gwCli6  = netip.MustParseAddr("2001:db8:1::1")
	gwMta4  = netip.MustParseAddr("198.51.100.1")
	gwMta6  = netip.MustParseAddr("2001:db8:2::1")
	mta4    = netip.MustParseAddr("198.51.100.2")
	mta6    = netip.MustParseAddr("2001:db8:2::2")
)

type topo struct {
	*netns.Topology
	cli, gw, mta string
}

func setup(t *testing.T) *topo {
	tp := &topo{Topology: netns.New(t, "sgtp")}
	ns := tp.Add("cli", "gw", "mta")
	tp.cli, tp.gw, tp.mta = ns[0], ns[1], ns[2]
	tp.Veth(tp.gw, "tpgwc", tp.cli, "tpcli")
	tp.Veth(tp.gw, "tpgwm", tp.mta, "tpmta")
	tp.Sysctl(tp.gw, "net.ipv4.ip_forward", "1")
	tp.Addr(tp.cli, "tpcli", cli4, 24)
	tp.Addr(tp.cli, "tpcli", cliPriv, 24)
	tp.Addr(tp.gw, "tpgwc", gwCli4, 24)
	tp.Addr(tp.gw, "tpgwc", gwPriv, 24)
	tp.Addr(tp.gw, "tpgwm", gwMta4, 24)
	tp.Addr(tp.mta, "tpmta", mta4, 24)
	tp.Run("ip", "-n", tp.cli, "route", "add", "default", "via", gwCli4.String())
	tp.Run("ip", "-n", tp.mta, "route", "add", "default", "via", gwMta4.String())
	if tp.V6 {
		tp.Sysctl(tp.gw, "net.ipv6.conf.all.forwarding", "1")
		tp.Addr(tp.cli, "tpcli", cli6, 64)
		tp.Addr(tp.gw, "tpgwc", gwCli6, 64)
		tp.Addr(tp.gw, "tpgwm", gwMta6, 64)
		tp.Addr(tp.mta, "tpmta", mta6, 64)
		tp.Run("ip", "-n", tp.cli, "-6", "route", "add", "default", "via", gwCli6.String())
		tp.Run("ip", "-n", tp.mta, "-6", "route", "add", "default", "via", gwMta6.String())
	}
	// The manual's TPROXY recipe, for IPv4 and IPv6: packets of a
	// socket the proxy holds (the MTA's answers to the spoofed
	// connection) and new SMTP connections are delivered locally
	// (mark 1 → table 100 → local route).
	tables := []struct{ ipt, fam, all string }{{"iptables", "-4", "0.0.0.0/0"}}
	if tp.V6 {
		tables = append(tables, struct{ ipt, fam, all string }{"ip6tables", "-6", "::/0"})
	}
	for _, x := range tables {
		tp.Exec(tp.gw, x.ipt, "-w", "-t", "mangle", "-N", "DIVERT")
		tp.Exec(tp.gw, x.ipt, "-w", "-t", "mangle", "-A", "DIVERT", "-j", "MARK", "--set-mark", "1")
		tp.Exec(tp.gw, x.ipt, "-w", "-t", "mangle", "-A", "DIVERT", "-j", "ACCEPT")
		tp.Exec(tp.gw, x.ipt, "-w", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "socket", "-j", "DIVERT")
		rule := []string{"-w", "-t", "mangle", "-A", "PREROUTING", "-i", "tpgwc", "-p", "tcp", "--dport", "25"}
		if x.ipt == "iptables" {
			// Private sources are the nat table's (tproxy,netfilter).
			rule = append(rule, "!", "-s", "10.0.0.0/8")
		}
		tp.Exec(tp.gw, x.ipt, append(rule, "-j", "TPROXY", "--tproxy-mark", "0x1/0x1", "--on-port", strconv.Itoa(proxyPort))...)
		tp.Run("ip", "-n", tp.gw, x.fam, "rule", "add", "fwmark", "1", "lookup", "100")
		tp.Run("ip", "-n", tp.gw, x.fam, "route", "add", "local", x.all, "dev", "lo", "table", "100")
	}
	tp.Exec(tp.gw, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-i", "tpgwc", "-s", "10.0.0.0/8",
		"-p", "tcp", "--dport", "25", "-j", "REDIRECT", "--to-ports", strconv.Itoa(proxyPort))
	return tp
}

func startProxy(t *testing.T, tp *topo, mode string) *harness.Daemon {
	d, _ := tp.StartDaemon(t, tp.gw, fmt.Sprintf(`mode %s
proxy_name tproxy.test
bind_address ::
port %d
session_workers 2
nat_header_type none
msg_loop_avoidance "loop refused (tproxy test)"
`, mode, proxyPort))
	return d
}

// relay sends one message from src (in CLI) to dst through the gateway
// and returns what the MTA saw of the connection and the client's port.
func relay(t *testing.T, tp *topo, mta *netns.MTA, d *harness.Daemon, src netip.Addr, dst netip.AddrPort) (netns.Conn, netip.AddrPort) {
	t.Helper()
	mark := d.Mark()
	conn := netns.Dial(t, tp.cli, src, dst)
	c := harness.NewClient(t, conn)
	if greet := c.Expect(220); !strings.Contains(greet, "sinkmta") {
		t.Fatalf("greeting %q, want the MTA's", greet)
	}
	seen := mta.Next(t)
	tok := harness.Token(t)
	c.Ehlo("client.tproxy.test")
	c.SendMail("alice@client.test", []string{"bob@mta.test"}, harness.Message("alice@client.test", "bob@mta.test", tok))
	c.Quit()
	local := conn.LocalAddr().(interface{ String() string }).String()
	cl := netip.MustParseAddrPort(local)
	cl = netip.AddrPortFrom(cl.Addr().Unmap(), cl.Port())
	re := regexp.MustCompile(`\bCLOSE by=(quit|client|server), .*` + harness.CloseSrc(cl.String()))
	d.WaitLogAfter(t, mark, re, 15*time.Second)
	found := false
	for _, l := range d.LogSince(mark) {
		if strings.Contains(l, "NEW ") && strings.Contains(l, "src="+cl.String()+",") {
			found = true
			// TPROXY keeps the destination; REDIRECT (a private
			// client in tproxy,netfilter) makes it the gateway's.
			want := dst
			if src == cliPriv {
				want = netip.AddrPortFrom(gwCli4, proxyPort)
			}
			if !strings.Contains(l, "on="+want.String()+",") {
				t.Errorf("NEW line %q: want on=%v", l, want)
			}
		}
	}
	if !found {
		t.Errorf("no NEW line for %v", cl)
	}
	if seen.Local != dst {
		t.Errorf("the MTA accepted the connection on %v, want %v", seen.Local, dst)
	}
	return seen, cl
}

func TestTproxy(t *testing.T) {
	tp := setup(t)
	addrs := []netip.Addr{mta4}
	if tp.V6 {
		addrs = append(addrs, mta6)
	}
	mta := netns.StartMTA(t, tp.mta, addrs...)

	t.Run("tproxy", func(t *testing.T) {
		d := startProxy(t, tp, "tproxy")
		t.Run("IPv4", func(t *testing.T) {
			seen, cl := relay(t, tp, mta, d, cli4, netip.AddrPortFrom(mta4, 25))
			if seen.Remote != cl {
				t.Errorf("the MTA saw the connection from %v, want the client's own %v", seen.Remote, cl)
			}
		})
		t.Run("IPv6", func(t *testing.T) {
			if !tp.V6 {
				netns.SkipOrFail(t, "IPv6 is disabled on this machine")
			}
			seen, cl := relay(t, tp, mta, d, cli6, netip.AddrPortFrom(mta6, 25))
			if seen.Remote != cl {
				t.Errorf("the MTA saw the connection from %v, want the client's own %v", seen.Remote, cl)
			}
		})
		t.Run("LoopAvoidance", func(t *testing.T) {
			mark := d.Mark()
			c := harness.NewClient(t, netns.Dial(t, tp.cli, cli4, netip.AddrPortFrom(gwCli4, proxyPort)))
			if text := c.Expect(554); !strings.Contains(text, "loop refused") {
				t.Errorf("a client connecting to the proxy itself got %q", text)
			}
			d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=loop,`), 15*time.Second)
			mta.None(t)
		})
		if code := d.Stop(t); code != 0 {
			t.Errorf("smtp-gated exited with %d", code)
		}
	})

	t.Run("tproxy,netfilter", func(t *testing.T) {
		d := startProxy(t, tp, "tproxy,netfilter")
		t.Run("public", func(t *testing.T) {
			seen, cl := relay(t, tp, mta, d, cli4, netip.AddrPortFrom(mta4, 25))
			if seen.Remote != cl {
				t.Errorf("a public client: the MTA saw %v, want the client's own %v (tproxy)", seen.Remote, cl)
			}
		})
		t.Run("private", func(t *testing.T) {
			seen, cl := relay(t, tp, mta, d, cliPriv, netip.AddrPortFrom(mta4, 25))
			if seen.Remote.Addr() != gwMta4 {
				t.Errorf("a private client %v: the MTA saw %v, want the gateway's %v (netfilter)", cl, seen.Remote, gwMta4)
			}
		})
		t.Run("IPv6", func(t *testing.T) {
			if !tp.V6 {
				netns.SkipOrFail(t, "IPv6 is disabled on this machine")
			}
			seen, cl := relay(t, tp, mta, d, cli6, netip.AddrPortFrom(mta6, 25))
			if seen.Remote != cl {
				t.Errorf("the MTA saw the connection from %v, want the client's own %v", seen.Remote, cl)
			}
		})
		if code := d.Stop(t); code != 0 {
			t.Errorf("smtp-gated exited with %d", code)
		}
	})
}
