// Package dns_test is the end-to-end test of the DNS checks, DNSBL and
// SPF, against a miekg/dns server on loopback (test/dnstest) that serves
// the test's zones; dns_server points the daemon at it, so that
// /etc/resolv.conf plays no part. The daemon starts as root with set_user
// nobody: the lookup process, which asks the DNS, runs chrooted.
package dns_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"smtp-gated/test/dnstest"
	"smtp-gated/test/harness"
	"smtp-gated/test/sinkmta"
)

func TestMain(m *testing.M) { harness.Main(m) }

const rejectText = "listed (dns test)"

// daemon starts smtp-gated in mode fixed in front of mta, with extra
// configuration lines.
func daemon(t *testing.T, bind string, mta netip.AddrPort, srv *dnstest.Server, extra string) (*harness.Daemon, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "the DNS test runs the daemon as root, to check the lookup process works chrooted")
	}
	dir := harness.DaemonDir(t, "sgdns-")
	// lockd (user nobody) writes the locks.
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	if err := os.Mkdir(dir+"/lock", 0o750); err != nil {
		t.Fatal(err)
	}
	os.Chown(dir+"/lock", uid, gid)
	port := harness.FreePort(t)
	conf := fmt.Sprintf(`mode fixed
fixed_server %s
fixed_server_port %d
bind_address %s
port %d
proxy_name dns.test
pidfile %[5]s/pid
control_socket %[5]s/ctl.sock
statefile %[5]s/state
spool_path %[5]s/spool
lock_path %[5]s/lock
ratelimit_path %[5]s
set_user nobody
log_level debug
session_workers 1
max_load 0
dns_server %s
msg_dnsdb_reject "%s"
msg_spf_reject "spf says no (dns test)"
`, mta.Addr(), mta.Port(), bind, port, dir, srv.Addr, rejectText) + extra
	d := harness.StartDaemon(t, conf)
	checkChrooted(t, d)
	return d, port
}

func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv(harness.EnvRequirePeers) == "1" {
		t.Fatalf("%s (and %s=1)", reason, harness.EnvRequirePeers)
	}
	t.Skip(reason)
}

// checkChrooted: the lookup process has no /etc/resolv.conf to read.
func checkChrooted(t *testing.T, d *harness.Daemon) {
	t.Helper()
	for _, pid := range harness.ChildPids(d.Pid()) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.HasSuffix(string(cmd), "-child\x00lookup\x00") {
			continue
		}
		root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
		if err != nil || root == "/" {
			t.Fatalf("lookup process %d has root %q (%v): not chrooted", pid, root, err)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", pid)); err == nil {
			t.Fatalf("lookup process %d sees an /etc/resolv.conf in its root %s", pid, root)
		}
		return
	}
	t.Fatal("no lookup process")
}

// dialFrom connects from source address src.
func dialFrom(t *testing.T, src string, port int, host string) *harness.Client {
	t.Helper()
	d := net.Dialer{Timeout: 15 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	return harness.NewClient(t, conn)
}

func startSink(t *testing.T) (*sinkmta.Sink, netip.AddrPort) {
	s, err := sinkmta.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, netip.MustParseAddrPort(s.Addr())
}

func nibbles(a netip.Addr) string {
	r, _ := dns.ReverseAddr(a.String())
	return strings.TrimSuffix(r, "ip6.arpa.")
}

func TestDNSBL(t *testing.T) {
	srv := dnstest.Start(t)
	srv.A("5.0.0.127.bl1.test", "127.0.0.2")
	srv.A("5.0.0.127.bl2.test", "127.0.0.3")
	srv.A("6.0.0.127.bl2.test", "127.0.0.4")
	srv.A(nibbles(netip.MustParseAddr("::1"))+"bl2.test", "127.0.0.9")
	srv.Drop("slow.test")
	sink, mta := startSink(t)

	t.Run("at connect", func(t *testing.T) {
		d, port := daemon(t, "::", mta, srv, "dnsbl bl1.test,bl2.test\ntimeout_lookup 2\n")
		for _, tc := range []struct {
			name, src, host, zone, answer string
		}{
			{"listed in both: the first zone", "127.0.0.5", "127.0.0.1", "bl1.test", "127.0.0.2"},
			{"listed in the second", "127.0.0.6", "127.0.0.1", "bl2.test", "127.0.0.4"},
			{"not listed (NXDOMAIN)", "127.0.0.7", "127.0.0.1", "", ""},
			{"IPv6", "::1", "::1", "bl2.test", "127.0.0.9"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if tc.src == "::1" && !harness.HasIPv6Loopback() {
					skipOrFail(t, "no IPv6 loopback")
				}
				mark := d.Mark()
				before := sink.Connections()
				c := dialFrom(t, tc.src, port, tc.host)
				if tc.zone == "" {
					if greet := c.Expect(220); !strings.Contains(greet, "sinkmta") {
						t.Errorf("greeting %q, want the MTA's", greet)
					}
					c.Quit()
					d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=quit, `), 15*time.Second)
					return
				}
				text := c.Expect(554)
				// 1.4's text: the zone and the address it answered.
				if want := rejectText + ": DNSBL: " + tc.zone + ": " + tc.answer; !strings.HasSuffix(text, want) {
					t.Errorf("reply %q, want it to say %q", text, want)
				}
				c.ExpectClosed()
				d.WaitLogAfter(t, mark, regexp.MustCompile(`DNSBL:FOUND domain=[0-9a-f.]+\.`+regexp.QuoteMeta(tc.zone)+`, answer=`), 15*time.Second)
				d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=dnsbl, `), 15*time.Second)
				if n := sink.Connections() - before; n != 0 {
					t.Errorf("the MTA got %d connections from a listed client", n)
				}
			})
		}
		d.Stop(t)
	})

	t.Run("timeout", func(t *testing.T) {
		d, port := daemon(t, "127.0.0.1", mta, srv, "dnsbl slow.test,bl1.test\ntimeout_lookup 1\n")
		start := time.Now()
		c := dialFrom(t, "127.0.0.7", port, "127.0.0.1")
		if greet := c.Expect(220); !strings.Contains(greet, "sinkmta") {
			t.Errorf("greeting %q, want the MTA's: a zone that does not answer lists nobody", greet)
		}
		if took := time.Since(start); took < time.Second || took > 4*time.Second {
			t.Errorf("the greeting came after %v, want after timeout_lookup (1 s)", took)
		}
		c.Quit()
		c = dialFrom(t, "127.0.0.5", port, "127.0.0.1")
		if text := c.Expect(554); !strings.HasSuffix(text, ": DNSBL: bl1.test: 127.0.0.2") {
			t.Errorf("got %q, want the listing of bl1.test after slow.test timed out", text)
		}
		d.WaitLog(t, regexp.MustCompile(`dnsbl: slow\.test: no answer within 1s`), 5*time.Second)
		d.Stop(t)
	})

	t.Run("auth_skip dnsbl", func(t *testing.T) {
		pf := harness.Postfix(t)
		d, port := daemon(t, "127.0.0.1", netip.MustParseAddrPort(pf.Addr), srv, "dnsbl bl1.test\nauth_skip dnsbl\n")
		c := dialFrom(t, "127.0.0.5", port, "127.0.0.1")
		c.Expect(220) // the check waits for MAIL FROM
		c.Ehlo("client.test")
		// As 1.4: 550, and the session is taken over.
		if text := c.Cmd("MAIL FROM:<alice@client.test>", 550); !strings.HasPrefix(text, "550 5.7.1 ") || !strings.HasSuffix(text, rejectText+": DNSBL: bl1.test: 127.0.0.2") {
			t.Errorf("MAIL from a listed client got %q", text)
		}
		if text := c.Cmd("MAIL FROM:<alice@client.test>", 451); !strings.HasSuffix(text, " "+rejectText) {
			t.Errorf("MAIL in the takeover got %q, want the reason", text)
		}
		c.Quit()
		d.WaitLog(t, regexp.MustCompile(`CLOSE by=dnsbl, `), 15*time.Second)
		// Authenticated first: not checked.
		c = dialFrom(t, "127.0.0.5", port, "127.0.0.1")
		c.Expect(220)
		c.Ehlo("client.test")
		c.AuthPlain(pf.User, pf.Pass, 235)
		c.Cmd("MAIL FROM:<alice@client.test>", 250)
		c.Cmd("RSET", 250)
		c.Quit()
		d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit, .*auth=3,`), 15*time.Second)
		d.Stop(t)
	})
}

func TestSPF(t *testing.T) {
	srv := dnstest.Start(t)
	ips := map[string]string{"incoming": "127.0.0.3", "outgoing": "127.0.0.4", "fixed": "192.0.2.77"}
	for mode, ip := range ips {
		srv.TXT("pass-"+mode+".spf.test", "v=spf1 ip4:"+ip+" -all")
	}
	srv.TXT("fail.spf.test", "v=spf1 ip4:192.0.2.200 -all")
	srv.TXT("softfail.spf.test", "v=spf1 ip4:192.0.2.200 ~all")
	srv.A("none.spf.test", "192.0.2.1")
	srv.Fail("servfail.spf.test", dns.RcodeServerFailure)
	srv.Drop("slow.spf.test")
	_, mta := startSink(t)

	for _, mode := range []string{"incoming", "outgoing", "fixed"} {
		t.Run(mode, func(t *testing.T) {
			other := map[string]string{"incoming": "outgoing", "outgoing": "fixed", "fixed": "incoming"}[mode]
			d, port := daemon(t, "127.0.0.1", mta, srv, "spf "+mode+"\noutgoing_addr 127.0.0.4\nspf_fixed_ip 192.0.2.77\ntimeout_lookup 1\n")
			c := dialFrom(t, "127.0.0.3", port, "127.0.0.1")
			c.Expect(220)
			c.Ehlo("client.spf.test")
			for _, tc := range []struct {
				domain, result string
				code           int
			}{
				{"pass-" + mode, "pass", 250},
				{"pass-" + other, "fail", 550}, // another mode's address: the right one was checked
				{"fail", "fail", 550},
				{"softfail", "softfail", 250},
				{"none", "none", 250},
				{"servfail", "temperror", 250},
				{"slow", "temperror", 250},
			} {
				mark := d.Mark()
				sender := "alice@" + tc.domain + ".spf.test"
				text := c.Cmd("MAIL FROM:<"+sender+">", tc.code)
				if tc.code == 550 && (!strings.Contains(text, "5.7.1") || !strings.HasSuffix(text, "spf says no (dns test): -")) {
					t.Errorf("<%s>: got %q, want 550 5.7.1 with msg_spf_reject", sender, text)
				}
				d.WaitLogAfter(t, mark, regexp.MustCompile(`SPF:`+tc.result+` ip=`+regexp.QuoteMeta(ips[mode])+`, helo=[^,]*, from=`+regexp.QuoteMeta(sender)+`\b`), 10*time.Second)
				if tc.code == 250 {
					c.Cmd("RSET", 250)
					continue
				}
				// As 1.4, the refusal took the session over: a new one
				// for the next sender.
				c.Cmd("MAIL FROM:<alice@pass-"+mode+".spf.test>", 451)
				c.Quit()
				d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=spf, `), 10*time.Second)
				c = dialFrom(t, "127.0.0.3", port, "127.0.0.1")
				c.Expect(220)
				c.Ehlo("client.spf.test")
			}
			c.Quit()
			d.Stop(t)
		})
	}

	t.Run("spf_log_only", func(t *testing.T) {
		d, port := daemon(t, "127.0.0.1", mta, srv, "spf incoming\nspf_log_only yes\n")
		c := dialFrom(t, "127.0.0.3", port, "127.0.0.1")
		c.Expect(220)
		c.Ehlo("client.spf.test")
		c.Cmd("MAIL FROM:<alice@fail.spf.test>", 250)
		d.WaitLog(t, regexp.MustCompile(`SPF:fail ip=.*, from=alice@fail\.spf\.test, .*action=accepted \(spf_log_only\)`), 10*time.Second)
		c.Quit()
		d.Stop(t)
	})

	// As 1.4: a client that authenticated is not checked. (One that did
	// not is refused: the cases above.)
	t.Run("authenticated", func(t *testing.T) {
		pf := harness.Postfix(t)
		d, port := daemon(t, "127.0.0.1", netip.MustParseAddrPort(pf.Addr), srv, "spf incoming\n")
		c := dialFrom(t, "127.0.0.3", port, "127.0.0.1")
		c.Expect(220)
		c.Ehlo("client.spf.test")
		c.AuthPlain(pf.User, pf.Pass, 235)
		c.Cmd("MAIL FROM:<alice@fail.spf.test>", 250)
		c.Cmd("RSET", 250)
		c.Quit()
		d.WaitLog(t, regexp.MustCompile(`SPF not checked: the client authenticated`), 10*time.Second)
		if l := d.LogLines(); strings.Contains(strings.Join(l, "\n"), "SPF fail") {
			t.Errorf("SPF was checked for an authenticated client:\n%s", strings.Join(l, "\n"))
		}
		d.Stop(t)
	})

	t.Run("trace in the debug log", func(t *testing.T) {
		d, port := daemon(t, "127.0.0.1", mta, srv, "spf incoming\n")
		c := dialFrom(t, "127.0.0.3", port, "127.0.0.1")
		c.Expect(220)
		c.Ehlo("client.spf.test")
		c.Cmd("MAIL FROM:<alice@pass-incoming.spf.test>", 250)
		d.WaitLog(t, regexp.MustCompile(`lookup: \[\d+\] spf: .*pass-incoming\.spf\.test`), 10*time.Second)
		c.Quit()
		d.Stop(t)
	})
}

// lock_on dnsbl and lock_on spf: the event locks the client (lockd writes
// <lock_path>/<ip>), and its next connection is refused as locked.
func TestLockOn(t *testing.T) {
	srv := dnstest.Start(t)
	srv.A("5.0.0.127.bl1.test", "127.0.0.2")
	srv.TXT("fail.spf.test", "v=spf1 ip4:192.0.2.200 -all")
	_, mta := startSink(t)
	for _, tc := range []struct {
		name, src, extra string
	}{
		{"dnsbl", "127.0.0.5", "dnsbl bl1.test\nlock_on dnsbl\n"},
		{"spf", "127.0.0.3", "spf incoming\nlock_on spf\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, port := daemon(t, "127.0.0.1", mta, srv, tc.extra+"lock_duration 600\nmsg_virus_locked \"locked (dns test)\"\n")
			c := dialFrom(t, tc.src, port, "127.0.0.1")
			if tc.name == "dnsbl" {
				c.Expect(554)
			} else {
				c.Expect(220)
				c.Ehlo("client.spf.test")
				c.Cmd("MAIL FROM:<alice@fail.spf.test>", 550)
				c.Quit()
			}
			c.Close()
			d.WaitLog(t, regexp.MustCompile(`CLOSE by=`), 15*time.Second)
			lock := lockDir(t, d) + "/" + tc.src
			if _, err := os.Stat(lock); err != nil {
				t.Errorf("no lock file: %v", err)
			}
			c = dialFrom(t, tc.src, port, "127.0.0.1")
			if text := c.Expect(554); !strings.Contains(text, "locked (dns test)") {
				t.Errorf("the next connection got %q, want the lock's refusal", text)
			}
			d.Stop(t)
		})
	}
}

// lockDir is the daemon's lock_path.
func lockDir(t *testing.T, d *harness.Daemon) string {
	b, err := os.ReadFile(d.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^lock_path (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no lock_path in the configuration")
	}
	return string(m[1])
}
