//go:build linux

// Package remote_test is the end-to-end test of modes remote-udp and
// remote: the destination and the ident come from a helper on the router.
//
// TestHelper runs the shipped cmd/smtp-gated-helper in a "router"
// namespace that NATs a private client to a proxy on another host:
//
//	CLI 10.9.0.2 ── 10.9.0.1 RTR 192.0.2.1 ── 192.0.2.2 PRX (smtp-gated, remote-udp)
//	                         RTR 198.51.100.1 ── 198.51.100.2 MTA
//
// RTR DNATs the client's port 25 to the proxy and masquerades it, so the
// proxy sees the connection from 192.0.2.1; its query goes to
// 192.0.2.1:114, where the helper reads the router's connection tracking.
//
// TestScripted runs the daemon against a helper of the test's own that
// answers as it is told: found, wrong cookie, wrong secret, NOTFOUND,
// silence, and destinations on the proxy's own host (refused as loops);
// and mode remote against a scripted TCP helper.
package remote_test

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"smtp-gated/internal/rphd"
	"smtp-gated/test/harness"
	"smtp-gated/test/netns"
)

func TestMain(m *testing.M) { harness.Main(m) }

const (
	secret    = 0x5ec2e7
	proxyPort = 9199
)

var (
	cliAddr = netip.MustParseAddr("10.9.0.2")
	rtrCli  = netip.MustParseAddr("10.9.0.1")
	rtrPrx  = netip.MustParseAddr("192.0.2.1")
	prxAddr = netip.MustParseAddr("192.0.2.2")
	rtrMta  = netip.MustParseAddr("198.51.100.1")
	mtaAddr = netip.MustParseAddr("198.51.100.2")
	mtaPort = netip.AddrPortFrom(mtaAddr, 25)
)

func TestHelper(t *testing.T) {
	tp := netns.New(t, "sgru")
	ns := tp.Add("cli", "rtr", "prx", "mta")
	cli, rtr, prx, mtaNS := ns[0], ns[1], ns[2], ns[3]
	tp.Veth(rtr, "rurc", cli, "rucli")
	tp.Veth(rtr, "rurp", prx, "ruprx")
	tp.Veth(rtr, "rurm", mtaNS, "rumta")
	tp.Sysctl(rtr, "net.ipv4.ip_forward", "1")
	tp.Addr(cli, "rucli", cliAddr, 24)
	tp.Addr(rtr, "rurc", rtrCli, 24)
	tp.Addr(rtr, "rurp", rtrPrx, 24)
	tp.Addr(prx, "ruprx", prxAddr, 24)
	tp.Addr(rtr, "rurm", rtrMta, 24)
	tp.Addr(mtaNS, "rumta", mtaAddr, 24)
	tp.Run("ip", "-n", cli, "route", "add", "default", "via", rtrCli.String())
	tp.Run("ip", "-n", prx, "route", "add", "default", "via", rtrPrx.String())
	tp.Run("ip", "-n", mtaNS, "route", "add", "default", "via", rtrMta.String())
	// The router sends its clients' SMTP to the proxy, NATed both ways.
	tp.Exec(rtr, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-i", "rurc", "-p", "tcp", "--dport", "25",
		"-j", "DNAT", "--to-destination", netip.AddrPortFrom(prxAddr, proxyPort).String())
	tp.Exec(rtr, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "rurp", "-s", "10.0.0.0/8", "-j", "MASQUERADE")

	mta := netns.StartMTA(t, mtaNS, mtaAddr)
	helper := startHelper(t, tp, rtr, fmt.Sprint(secret))

	conf := `mode remote-udp
proxy_name remote.test
bind_address 0.0.0.0
port 9199
remote_port 114
remote_udp_secret ` + fmt.Sprint(secret) + `
remote_udp_retries 2
timeout_lookup 2
session_workers 1
`
	t.Run("found", func(t *testing.T) {
		d, _ := tp.StartDaemon(t, prx, conf)
		mark := d.Mark()
		c := harness.NewClient(t, netns.Dial(t, cli, cliAddr, mtaPort))
		if greet := c.Expect(220); !strings.Contains(greet, "sinkmta") {
			t.Fatalf("greeting %q, want the MTA's", greet)
		}
		seen := mta.Next(t)
		if seen.Local != mtaPort || seen.Remote.Addr() != prxAddr {
			t.Errorf("the MTA saw %v -> %v, want %v -> %v", seen.Remote, seen.Local, prxAddr, mtaPort)
		}
		tok := harness.Token(t)
		c.Ehlo("client.remote.test")
		c.SendMail("alice@client.test", []string{"bob@mta.test"}, harness.Message("alice@client.test", "bob@mta.test", tok))
		c.Quit()
		line := d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=quit, .*src=192\.0\.2\.1, ident=10\.9\.0\.2, `), 15*time.Second)
		t.Logf("%s", line)
		var body string
		for _, m := range mta.Kept() {
			if strings.Contains(string(m.Body), tok) {
				body = string(m.Body)
			}
		}
		if !strings.Contains(body, "X-Nat-Received: from [192.0.2.1]:") || !strings.Contains(body, "[ident 10.9.0.2]") {
			t.Errorf("the MTA got no X-Nat-Received header with the ident:\n%.400s", body)
		}
		if !strings.Contains(helper.out(), "client 10.9.0.2:") {
			t.Errorf("the helper did not log the query:\n%s", helper.out())
		}
		d.Stop(t)
	})
	t.Run("wrong secret", func(t *testing.T) {
		d, _ := tp.StartDaemon(t, prx, conf+"remote_udp_secret 7\nmsg_lookup_timeout \"lookup timed out (remote test)\"\n")
		mark := d.Mark()
		start := time.Now()
		c := harness.NewClient(t, netns.Dial(t, cli, cliAddr, mtaPort))
		checkTakeover(t, c, "lookup timed out (remote test)")
		if took := time.Since(start); took < 4*time.Second {
			t.Errorf("the greeting came after %v, want after both queries timed out (2 × 2 s)", took)
		}
		d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=lookup, `), 15*time.Second)
		mta.None(t)
		if n := strings.Count(helper.out(), "wrong secret"); n < 2 {
			t.Errorf("the helper ignored %d queries for their secret, want 2:\n%s", n, helper.out())
		}
		d.Stop(t)
	})
}

// helperProc is the shipped helper running in the router's namespace.
type helperProc struct {
	buf *syncBuffer
}

func (h *helperProc) out() string { return h.buf.String() }

func startHelper(t *testing.T, tp *netns.Topology, ns, secret string) *helperProc {
	t.Helper()
	bin := harness.BuildBinary(t, "smtp-gated/cmd/smtp-gated-helper")
	h := &helperProc{buf: &syncBuffer{}}
	cmd := exec.Command(tp.IP, "netns", "exec", ns, bin, "-v", "-l", "0.0.0.0:114", "-s", secret, "-u", "nobody")
	cmd.Stdout, cmd.Stderr = h.buf, h.buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(h.out(), "answering on") {
		if time.Now().After(deadline) {
			t.Fatalf("the helper did not start:\n%s", h.out())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return h
}

// checkTakeover expects the documented answer to a failed look-up: the
// proxy's own greeting, then a session that refuses MAIL with reason.
func checkTakeover(t *testing.T, c *harness.Client, reason string) {
	t.Helper()
	c.SetTimeout(30 * time.Second)
	if greet := c.Expect(220); !strings.HasSuffix(greet, " SMTP") {
		t.Errorf("greeting %q, want 1.4's \"220 <proxy_name> SMTP\"", greet)
	}
	c.Cmd("EHLO client.test", 250)
	if text := c.Cmd("MAIL FROM:<alice@client.test>", 451); !strings.Contains(text, reason) {
		t.Errorf("MAIL got %q, want the reason %q", text, reason)
	}
	c.Cmd("RCPT TO:<bob@mta.test>", 503)
	c.Quit()
}

// ---------------------------------------------------------------------------
// The scripted helpers, on the proxy's loopback, in a namespace of its own
// ("sprx") with the MTA behind a veth in another ("smta"): the MTA must
// not be on the proxy's host, or the proxy refuses it as a loop.

type behaviour int32

const (
	found behaviour = iota
	wrongCookie
	wrongSecret
	notFound
	silence
)

type scripted struct {
	how     atomic.Int32
	queries atomic.Int32
	dst     atomic.Value // netip.AddrPort
	port    int
}

// startScripted answers remote-udp queries on 127.0.0.1 in ns.
func startScripted(t *testing.T, ns string, dst netip.AddrPort) *scripted {
	var pc net.PacketConn
	if err := netns.In(ns, func() (err error) { pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &scripted{port: pc.LocalAddr().(*net.UDPAddr).Port}
	s.dst.Store(dst)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.queries.Add(1)
			q, err := rphd.Unmarshal(buf[:n])
			if err != nil {
				continue
			}
			r := *q
			dst := s.dst.Load().(netip.AddrPort)
			r.Flags = rphd.FlagReply | rphd.FlagFound
			r.Dst, r.DstPort = dst.Addr().As4(), dst.Port()
			r.SetIdent("user-7")
			switch behaviour(s.how.Load()) {
			case wrongCookie:
				r.Cookie++
			case wrongSecret:
				r.Secret ^= 0xffff
			case notFound:
				r.Flags = rphd.FlagReply | rphd.FlagNotFound
			case silence:
				continue
			}
			pc.WriteTo(r.Marshal(), from)
		}
	}()
	return s
}

// Addresses of the scripted tests' namespaces.
var (
	sPrx = netip.MustParseAddr("198.51.100.1")
	sMta = netip.MustParseAddrPort("198.51.100.2:25")
)

// scriptedTopology makes the proxy's and the MTA's namespaces and starts
// the MTA.
func scriptedTopology(t *testing.T) (*netns.Topology, string, *netns.MTA) {
	tp := netns.New(t, "sgrs")
	ns := tp.Add("sprx", "smta")
	tp.Veth(ns[0], "rsp", ns[1], "rsm")
	tp.Addr(ns[0], "rsp", sPrx, 24)
	tp.Addr(ns[1], "rsm", sMta.Addr(), 24)
	return tp, ns[0], netns.StartMTA(t, ns[1], sMta.Addr())
}

func scriptedConfig(extra string) string {
	return fmt.Sprintf(`bind_address 127.0.0.1
port %d
proxy_name remote.test
session_workers 1
`, proxyPort) + extra
}

// dialProxy connects to the proxy from its own namespace.
func dialProxy(t *testing.T, ns string) *harness.Client {
	return harness.NewClient(t, netns.Dial(t, ns, netip.Addr{}, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), proxyPort)))
}

// checkLoop expects the answer to a destination refused as a loop: 554
// msg_loop_avoidance at once, the connection closed, the cause logged,
// and nothing sent to the MTA.
func checkLoop(t *testing.T, d *harness.Daemon, mark harness.Mark, c *harness.Client, mta *netns.MTA, cause string) {
	t.Helper()
	if text := c.Expect(554); !strings.Contains(text, "loop (scripted)") {
		t.Errorf("554 %q, want msg_loop_avoidance", text)
	}
	c.ExpectClosed()
	d.WaitLogAfter(t, mark, regexp.MustCompile(`avoiding loop: .*`+regexp.QuoteMeta(cause)), 15*time.Second)
	d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=loop, `), 15*time.Second)
	mta.None(t)
}

func TestScripted(t *testing.T) {
	tp, prx, mta := scriptedTopology(t)

	t.Run("remote-udp", func(t *testing.T) {
		h := startScripted(t, prx, sMta)
		d, _ := tp.StartDaemon(t, prx, scriptedConfig(fmt.Sprintf(`mode remote-udp
remote_port %d
remote_udp_secret %d
remote_udp_retries 3
timeout_lookup 1
msg_lookup_timeout "timed out (scripted)"
msg_lookup_mismatch "garbled (scripted)"
msg_lookup_notfound "not found (scripted)"
msg_loop_avoidance "loop (scripted)"
`, h.port, secret)))
		for _, tc := range []struct {
			name    string
			how     behaviour
			reason  string // "" relayed
			queries int32
			log     string
		}{
			{"found", found, "", 1, ""},
			{"wrong cookie", wrongCookie, "garbled (scripted)", 3, `look-up: remote-udp: 3 queries to 127\.0\.0\.1:\d+, no valid answer \(cookie`},
			{"wrong secret", wrongSecret, "garbled (scripted)", 3, `no valid answer \(wrong secret`},
			{"notfound", notFound, "not found (scripted)", 1, `has no record of`},
			{"silence", silence, "timed out (scripted)", 3, `3 queries to 127\.0\.0\.1:\d+ unanswered after 1s each`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h.how.Store(int32(tc.how))
				h.queries.Store(0)
				mark := d.Mark()
				start := time.Now()
				c := dialProxy(t, prx)
				if tc.reason == "" {
					if greet := c.Expect(220); !strings.Contains(greet, "sinkmta") {
						t.Fatalf("greeting %q, want the MTA's", greet)
					}
					mta.Next(t)
					c.Ehlo("client.test")
					c.SendMail("alice@client.test", []string{"bob@mta.test"}, harness.Message("alice@client.test", "bob@mta.test", harness.Token(t)))
					c.Quit()
					d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=quit, .*ident=user-7, `), 15*time.Second)
				} else {
					checkTakeover(t, c, tc.reason)
					d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=lookup, `), 15*time.Second)
					d.WaitLogAfter(t, mark, regexp.MustCompile(tc.log), 5*time.Second)
				}
				if n := h.queries.Load(); n != tc.queries {
					t.Errorf("the helper got %d queries, want %d", n, tc.queries)
				}
				if tc.how == silence {
					if took := time.Since(start); took < 3*time.Second || took > 8*time.Second {
						t.Errorf("silence: the session took %v, want about 3 × timeout_lookup (1 s)", took)
					}
				}
			})
		}
		// A helper's answer that points back at the proxy's host is a
		// loop, whatever the port.
		h.how.Store(int32(found))
		for _, tc := range []struct {
			name  string
			dst   string
			cause string
		}{
			{"loopback", "127.0.0.1:25", "loopback address"},
			{"other loopback", "127.9.9.9:2525", "loopback address"},
			{"unspecified", "0.0.0.0:25", "unspecified address"},
			{"interface address", netip.AddrPortFrom(sPrx, 25).String(), "address of the proxy's own"},
			{"address connected to", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), proxyPort).String(), "the proxy itself"},
		} {
			t.Run("loop "+tc.name, func(t *testing.T) {
				h.dst.Store(netip.MustParseAddrPort(tc.dst))
				t.Cleanup(func() { h.dst.Store(sMta) })
				mark := d.Mark()
				checkLoop(t, d, mark, dialProxy(t, prx), mta, tc.cause)
			})
		}
		d.Stop(t)
	})

	t.Run("remote", func(t *testing.T) {
		ln := netns.Listen(t, prx, "tcp4", "127.0.0.1:0")
		var answer atomic.Value
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					buf := make([]byte, 64)
					n, _ := c.Read(buf)
					var cport, lport int
					fmt.Sscanf(string(buf[:n]), "%d , %d", &cport, &lport)
					fmt.Fprintf(c, answer.Load().(string), cport, lport)
				}()
			}
		}()
		d, _ := tp.StartDaemon(t, prx, scriptedConfig(fmt.Sprintf(`mode remote
remote_port %d
timeout_lookup 2
msg_lookup_notfound "not found (scripted ident)"
msg_loop_avoidance "loop (scripted)"
`, ln.Addr().(*net.TCPAddr).Port)))

		origin := func(dst netip.AddrPort) string {
			return "%d , %d : ORIGIN : " + dst.Addr().String() + " : " + fmt.Sprint(dst.Port()) + " : carol\r\n"
		}
		answer.Store(origin(sMta))
		mark := d.Mark()
		c := dialProxy(t, prx)
		if greet := c.Expect(220); !strings.Contains(greet, "sinkmta") {
			t.Fatalf("greeting %q, want the MTA's", greet)
		}
		mta.Next(t)
		c.Quit()
		d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=quit, .*ident=carol, `), 15*time.Second)

		answer.Store("%d , %d : ERROR : NO-USER\r\n")
		mark = d.Mark()
		checkTakeover(t, dialProxy(t, prx), "not found (scripted ident)")
		d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=lookup, `), 15*time.Second)

		answer.Store(origin(netip.MustParseAddrPort("127.0.0.2:25")))
		mark = d.Mark()
		checkLoop(t, d, mark, dialProxy(t, prx), mta, "loopback address")
		d.Stop(t)
	})
}

// syncBuffer collects a process's output, read while it is written.
type syncBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
