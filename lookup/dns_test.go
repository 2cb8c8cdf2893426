package lookup

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
	"smtp-gated/test/dnstest"
)

func testConfig(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader(text), "test")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestDnsblName(t *testing.T) {
	for _, tc := range []struct{ addr, zone, want string }{
		{"192.0.2.5", "bl.example", "5.2.0.192.bl.example."},
		{"::ffff:192.0.2.5", "bl.example.", "5.2.0.192.bl.example."},
		{"2001:db8::1", "bl.example", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example."},
	} {
		if got := dnsblName(netip.MustParseAddr(tc.addr), tc.zone); got != tc.want {
			t.Errorf("dnsblName(%s, %s) = %s, want %s", tc.addr, tc.zone, got, tc.want)
		}
	}
	// The nibbles are those of the reverse zone.
	a := netip.MustParseAddr("2001:db8:85a3::8a2e:370:7334")
	arpa, _ := dns.ReverseAddr(a.String())
	if got := dnsblName(a, "ip6.arpa"); got != arpa {
		t.Errorf("nibbles %s, want %s", got, arpa)
	}
}

func TestDnsbl(t *testing.T) {
	srv := dnstest.Start(t)
	srv.A("5.0.0.127.bl1.test", "127.0.0.2")
	srv.A("5.0.0.127.bl2.test", "127.0.0.3")
	srv.A("6.0.0.127.bl2.test", "127.0.0.4")
	srv.A("7.0.0.127.refusing.test", "127.255.255.254")
	srv.A("7.0.0.127.odd.test", "192.0.2.1")
	srv.A(dnsblName(netip.MustParseAddr("::1"), "bl1.test"), "127.0.0.10")
	srv.Drop("slow.test")
	srv.Fail("broken.test", dns.RcodeServerFailure)
	servers := []string{srv.Addr}
	const timeout = 400 * time.Millisecond
	for _, tc := range []struct {
		name   string
		zones  string
		addr   string
		zone   string // want
		answer string
		errs   []string // substrings of Err
		slow   bool     // must take the whole timeout
	}{
		{"listed", "bl1.test", "127.0.0.5", "bl1.test", "127.0.0.2", nil, false},
		{"first listed in order", "bl2.test,bl1.test", "127.0.0.5", "bl2.test", "127.0.0.3", nil, false},
		{"second zone lists", "bl1.test,bl2.test", "127.0.0.6", "bl2.test", "127.0.0.4", nil, false},
		{"not listed (NXDOMAIN)", "bl1.test,bl2.test", "127.0.0.8", "", "", nil, false},
		{"IPv6 nibbles", "bl2.test,bl1.test", "::1", "bl1.test", "127.0.0.10", nil, false},
		{"listed before a silent zone", "bl1.test,slow.test", "127.0.0.5", "bl1.test", "127.0.0.2", nil, false},
		{"silent zone, then listed", "slow.test,bl1.test", "127.0.0.5", "bl1.test", "127.0.0.2", []string{"slow.test: "}, true},
		{"timeout", "slow.test", "127.0.0.5", "", "", []string{"slow.test: "}, true},
		{"SERVFAIL", "broken.test,bl1.test", "127.0.0.5", "bl1.test", "127.0.0.2", []string{"broken.test: SERVFAIL"}, false},
		{"refusal is not a listing", "refusing.test", "127.0.0.7", "", "", []string{"refused"}, false},
		{"answer outside 127/8", "odd.test", "127.0.0.7", "", "", []string{"not in 127.0.0.0/8"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t, "mode fixed\nfixed_server 127.0.0.1\ndnsbl "+tc.zones+"\n")
			start := time.Now()
			a := dnsbl(servers, cfg.DnsblZones(), netip.MustParseAddr(tc.addr), timeout)
			took := time.Since(start)
			if a.Zone != tc.zone || a.Answer != tc.answer {
				t.Errorf("got zone %q answer %q (%s), want %q %q", a.Zone, a.Answer, a.Err, tc.zone, tc.answer)
			}
			for _, e := range tc.errs {
				if !strings.Contains(a.Err, e) {
					t.Errorf("Err %q lacks %q", a.Err, e)
				}
			}
			if len(tc.errs) == 0 && a.Err != "" {
				t.Errorf("Err %q, want none", a.Err)
			}
			if tc.slow && (took < timeout || took > timeout+time.Second) {
				t.Errorf("took %v, want the timeout %v", took, timeout)
			}
			if !tc.slow && took > timeout/2 {
				t.Errorf("took %v: did it wait for a zone it did not need?", took)
			}
		})
	}
	t.Run("no name server", func(t *testing.T) {
		a := dnsbl(nil, []string{"bl1.test"}, netip.MustParseAddr("127.0.0.5"), timeout)
		if a.Zone != "" || a.Err == "" {
			t.Errorf("got %+v, want not listed with an error", a)
		}
	})
	t.Run("second server answers", func(t *testing.T) {
		a := dnsbl([]string{"127.0.0.1:1", srv.Addr}, []string{"bl1.test"}, netip.MustParseAddr("127.0.0.5"), timeout)
		if a.Zone != "bl1.test" {
			t.Errorf("got %+v, want listed by the second server", a)
		}
	})
}

func TestSPF(t *testing.T) {
	srv := dnstest.Start(t)
	srv.TXT("pass.test", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all")
	srv.TXT("fail.test", "v=spf1 ip4:192.0.2.99 -all")
	srv.TXT("softfail.test", "v=spf1 ~all")
	srv.TXT("neutral.test", "v=spf1 ?all")
	srv.TXT("include.test", "v=spf1 include:pass.test -all")
	srv.TXT("helo.test", "v=spf1 ip4:192.0.2.10 -all")
	srv.TXT("bad.test", "v=spf1 ip4:not-an-address -all")
	srv.A("nospf.test", "192.0.2.1")
	srv.Fail("servfail.test", dns.RcodeServerFailure)
	srv.Drop("slow.test")
	const timeout = 500 * time.Millisecond
	ip := netip.MustParseAddr("192.0.2.10")
	for _, tc := range []struct {
		sender, helo string
		ip           netip.Addr
		want         string
	}{
		{"alice@pass.test", "client.test", ip, "pass"},
		{"alice@pass.test", "client.test", netip.MustParseAddr("2001:db8::10"), "pass"},
		{"alice@pass.test", "client.test", netip.MustParseAddr("192.0.2.11"), "fail"},
		{"alice@fail.test", "client.test", ip, "fail"},
		{"alice@softfail.test", "client.test", ip, "softfail"},
		{"alice@neutral.test", "client.test", ip, "neutral"},
		{"alice@include.test", "client.test", ip, "pass"},
		{"alice@nospf.test", "client.test", ip, "none"},
		{"alice@nxdomain.test", "client.test", ip, "none"},
		{"alice@servfail.test", "client.test", ip, "temperror"},
		{"alice@slow.test", "client.test", ip, "temperror"},
		{"alice@bad.test", "client.test", ip, "permerror"},
		{"", "helo.test", ip, "pass"},
		{"", "helo.test", netip.MustParseAddr("192.0.2.11"), "fail"},
	} {
		start := time.Now()
		a := spfCheck([]string{srv.Addr}, &ipc.SpfQuery{ID: 1, IP: tc.ip, Helo: tc.helo, Sender: tc.sender}, timeout, t.Logf)
		if a.Result != tc.want {
			t.Errorf("<%s> helo %s from %v: got %s (%s), want %s", tc.sender, tc.helo, tc.ip, a.Result, a.Err, tc.want)
		}
		if took := time.Since(start); took > timeout+time.Second {
			t.Errorf("<%s>: took %v, more than the timeout %v", tc.sender, took, timeout)
		}
	}
	// The names asked are absolute: no search domain.
	for _, q := range srv.Queries() {
		if !strings.HasSuffix(q, ".test.") {
			t.Errorf("query %q is not for a test name: a search domain was tried", q)
		}
	}
}

func TestResolvConf(t *testing.T) {
	p := t.TempDir() + "/resolv.conf"
	writeFile(t, p, "search example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:2\n")
	ns, err := resolvConf(p)
	if err != nil || strings.Join(ns, ",") != "192.0.2.53:53,[2001:db8::53]:53" {
		t.Errorf("got %q, %v", ns, err)
	}
	if _, err := resolvConf(p + ".missing"); err == nil {
		t.Error("a missing file: no error")
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
