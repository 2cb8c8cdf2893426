package main

import (
	"net/netip"
	"strings"
	"testing"

	"smtp-gated/internal/rphd"
)

const table = `ipv4     2 udp      17 29 src=10.9.0.2 dst=192.0.2.53 sport=5353 dport=53 [UNREPLIED] src=192.0.2.53 dst=10.9.0.2 sport=53 dport=5353 mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.9.0.3 dst=198.51.100.9 sport=41000 dport=25 src=192.0.2.2 dst=192.0.2.1 sport=9199 dport=41001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.9.0.2 dst=198.51.100.2 sport=40000 dport=25 src=192.0.2.2 dst=192.0.2.1 sport=9199 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv6     10 tcp      6 431999 ESTABLISHED src=2001:db8::2 dst=2001:db8:1::25 sport=40000 dport=25 src=2001:db8:1::25 dst=2001:db8::2 sport=25 dport=40000 [ASSURED] mark=0 zone=0 use=2
garbage line
`

func query(secret uint32, src, dst string) *rphd.Datagram {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return &rphd.Datagram{Magic: rphd.Magic, Cookie: 0xfeedbeef, Secret: secret, Version: rphd.Version,
		Flags: rphd.FlagQuery, Src: s.Addr().As4(), Dst: d.Addr().As4(), SrcPort: s.Port(), DstPort: d.Port()}
}

func TestAnswer(t *testing.T) {
	h := &helper{secret: 0x1234, ct: strings.NewReader(table)}
	for _, tc := range []struct {
		name       string
		q          *rphd.Datagram
		flags      uint16 // 0: no reply
		dst, ident string
		src        string
	}{
		{"found", query(0x1234, "192.0.2.1:40000", "192.0.2.2:9199"), rphd.FlagReply | rphd.FlagFound, "198.51.100.2:25", "10.9.0.2", "10.9.0.2:40000"},
		{"second entry", query(0x1234, "192.0.2.1:41001", "192.0.2.2:9199"), rphd.FlagReply | rphd.FlagFound, "198.51.100.9:25", "10.9.0.3", "10.9.0.3:41000"},
		{"not found", query(0x1234, "192.0.2.1:40001", "192.0.2.2:9199"), rphd.FlagReply | rphd.FlagNotFound, "192.0.2.2:9199", "", "192.0.2.1:40001"},
		{"wrong secret", query(0x1235, "192.0.2.1:40000", "192.0.2.2:9199"), 0, "", "", ""},
	} {
		b, why := h.answer(tc.q.Marshal())
		if tc.flags == 0 {
			if b != nil {
				t.Errorf("%s: answered (%s), want silence", tc.name, why)
			}
			continue
		}
		r, err := rphd.Unmarshal(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		dst := netip.AddrPortFrom(netip.AddrFrom4(r.Dst), r.DstPort).String()
		src := netip.AddrPortFrom(netip.AddrFrom4(r.Src), r.SrcPort).String()
		if r.Flags != tc.flags || r.Cookie != 0xfeedbeef || r.Secret != 0x1234 || dst != tc.dst || src != tc.src || r.IdentString() != tc.ident {
			t.Errorf("%s: got flags %#x cookie %#x dst %s src %s ident %q (%s), want flags %#x dst %s src %s ident %q",
				tc.name, r.Flags, r.Cookie, dst, src, r.IdentString(), why, tc.flags, tc.dst, tc.src, tc.ident)
		}
	}
	if b, _ := h.answer([]byte("short")); b != nil {
		t.Error("a short datagram was answered")
	}
	reply := query(0x1234, "192.0.2.1:40000", "192.0.2.2:9199")
	reply.Flags = rphd.FlagReply
	if b, _ := h.answer(reply.Marshal()); b != nil {
		t.Error("a reply was answered")
	}
}

func TestParseSecret(t *testing.T) {
	for in, want := range map[string]uint32{"0": 0, "1234": 1234, "0x10": 16, "010": 8, "-1": 0xffffffff, "0xffffffff": 0xffffffff} {
		if got, err := parseSecret(in); err != nil || got != want {
			t.Errorf("parseSecret(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "0x100000000"} {
		if _, err := parseSecret(in); err == nil {
			t.Errorf("parseSecret(%q): no error", in)
		}
	}
}

func FuzzParseConntrack(f *testing.F) {
	for _, l := range strings.Split(table, "\n") {
		f.Add(l)
	}
	f.Fuzz(func(t *testing.T, line string) {
		e, ok := parseConntrack(line)
		if ok && (!e.origSrc.IsValid() || !e.replyDst.IsValid()) {
			t.Fatalf("%q: incomplete entry %+v", line, e)
		}
	})
}
