package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestDNSServers(t *testing.T) {
	c := Default()
	c.DnsServer = " 192.0.2.53, [2001:db8::53]:5353,,127.0.0.1:5300 ,2001:db8::1"
	got := c.DNSServers()
	want := []string{"192.0.2.53:53", "[2001:db8::53]:5353", "127.0.0.1:5300", "[2001:db8::1]:53"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DNSServers() = %q, want %q", got, want)
	}
	for _, bad := range []string{"ns.example.org", "192.0.2.1:dns", "300.1.1.1"} {
		_, err := Parse(strings.NewReader("mode getsockname\ndns_server "+bad+"\n"), "test")
		if err == nil || !strings.Contains(err.Error(), "dns_server") {
			t.Errorf("dns_server %q: got error %v, want one naming dns_server", bad, err)
		}
	}
}

func TestSpoofs(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		src  string
		want bool
	}{
		{ModeTproxy, "10.1.2.3", true},
		{ModeTproxy, "192.0.2.2", true},
		{ModeTproxyNetfilter, "10.1.2.3", false},
		{ModeTproxyNetfilter, "172.16.0.1", false},
		{ModeTproxyNetfilter, "172.31.255.255", false},
		{ModeTproxyNetfilter, "172.32.0.1", true},
		{ModeTproxyNetfilter, "192.168.7.7", false},
		{ModeTproxyNetfilter, "169.254.1.1", false},
		{ModeTproxyNetfilter, "::ffff:10.0.0.1", false},
		{ModeTproxyNetfilter, "192.0.2.2", true},
		{ModeTproxyNetfilter, "2001:db8::2", true},
		{ModeNetfilter, "192.0.2.2", false},
		{ModeFixed, "192.0.2.2", false},
	} {
		c := Default()
		c.Mode = tc.mode
		if got := c.Spoofs(netip.MustParseAddr(tc.src)); got != tc.want {
			t.Errorf("mode %v, source %s: Spoofs = %v, want %v", tc.mode, tc.src, got, tc.want)
		}
	}
}
