package lockd

import (
	"net/netip"
	"strings"
	"testing"
)

func TestFileNames(t *testing.T) {
	for _, tc := range []struct {
		addr, ident, name, str string
	}{
		{"192.0.2.1", "", "192.0.2.1", "192.0.2.1"},
		{"::ffff:192.0.2.1", "", "192.0.2.1", "192.0.2.1"},
		{"2001:db8::1", "", "2001_db8__1", "2001:db8::1"},
		{"fe80::1%eth0", "", "fe80__1", "fe80::1"},
		{"::", "", "__", "::"},
		{"192.0.2.1", "alice", "192.0.2.1-alice", "192.0.2.1-alice"},
		// 1.4's cleaning: letters, digits and -=+: stay, other bytes
		// are '_', and 20 bytes are kept.
		{"192.0.2.1", "a-b/c d%", "192.0.2.1-a-b_c_d_", "192.0.2.1-a-b/c d%"},
		{"2001:db8::2", "bob.smith@x+y=z~", "2001_db8__2-bob_smith_x+y=z_", "2001:db8::2-bob.smith@x+y=z~"},
		{"192.0.2.1", "..", "192.0.2.1-__", "192.0.2.1-.."},
		{"192.0.2.1", "DOM:user=1+2", "192.0.2.1-DOM:user=1+2", "192.0.2.1-DOM:user=1+2"},
		{"192.0.2.1", "abcdefghij0123456789xyz", "192.0.2.1-abcdefghij0123456789", "192.0.2.1-abcdefghij0123456789xyz"},
		{"192.0.2.1", "é", "192.0.2.1-__", "192.0.2.1-é"},
	} {
		c, err := newClient(netip.MustParseAddr(tc.addr), tc.ident)
		if err != nil {
			t.Fatalf("newClient(%s, %q): %v", tc.addr, tc.ident, err)
		}
		if got := c.fileName(); got != tc.name {
			t.Errorf("fileName(%s, %q) = %q, want %q", tc.addr, tc.ident, got, tc.name)
		}
		if got := c.String(); got != tc.str {
			t.Errorf("String(%s, %q) = %q, want %q", tc.addr, tc.ident, got, tc.str)
		}
		// Read back, the client is the one of its files.
		back, ok := parseFileName(tc.name)
		if !ok || back.addr != c.addr || back.fileName() != tc.name {
			t.Errorf("parseFileName(%q) = %v, %v; want %v", tc.name, back, ok, c)
		}
		arg, err := parseClientArg(tc.str)
		if tc.ident != "" && strings.Contains(tc.ident, "\x00") {
			continue
		}
		if err != nil || arg != c {
			t.Errorf("parseClientArg(%q) = %v, %v; want %v", tc.str, arg, err, c)
		}
		if arg, err := parseClientArg(tc.name); err != nil || arg.addr != c.addr {
			t.Errorf("parseClientArg(%q) (file name) = %v, %v", tc.name, arg, err)
		}
	}
}

func TestFileNamesRefused(t *testing.T) {
	for _, name := range []string{
		"", ".", "..", "smtp-gated.pid", "control.sock", ".tmp-192.0.2.1.123",
		"192.0.2.1-", "192.0.2.1-a%2", "192.0.2.1-a.b", "192.0.2.1-a@b",
		"2001:db8::1", "fe80__1%eth0", "__ffff_192.0.2.1", "192.0.2.01",
		"192.0.2.1-a/b", "192.0.2.1-a b", "1.2.3.4.5", "192.0.2.1-" + strings.Repeat("x", 21),
	} {
		if c, ok := parseFileName(name); ok {
			t.Errorf("parseFileName(%q) = %v, want refused", name, c)
		}
	}
	for _, arg := range []string{"", "example.org", "192.0.2.1-", "fe80::1%eth0", "192.0.2.300", "192.0.2.1-a\nb",
		"192.0.2.1-" + strings.Repeat("x", maxIdent+1)} {
		if c, err := parseClientArg(arg); err == nil {
			t.Errorf("parseClientArg(%q) = %v, want an error", arg, c)
		}
	}
}
