package lookup

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"smtp-gated/internal/rphd"
	"smtp-gated/ipc"
)

// scriptedHelper answers remote-udp queries on 127.0.0.1 with answer(n,
// query), n counting queries from 1; a nil answer is silence.
func scriptedHelper(t *testing.T, answer func(n int, q *rphd.Datagram) []byte) (port uint16, queries *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	queries = new(atomic.Int32)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q, err := rphd.Unmarshal(buf[:n])
			if err != nil {
				t.Errorf("helper got a malformed query: %v", err)
				continue
			}
			if b := answer(int(queries.Add(1)), q); b != nil {
				pc.WriteTo(b, from)
			}
		}
	}()
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port), queries
}

func found(q *rphd.Datagram, dst netip.AddrPort, ident string) []byte {
	r := *q
	r.Flags = rphd.FlagReply | rphd.FlagFound
	r.Dst, r.DstPort = dst.Addr().As4(), dst.Port()
	r.SetIdent(ident)
	return r.Marshal()
}

func TestRemoteUDP(t *testing.T) {
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	local := netip.MustParseAddrPort("127.0.0.1:9199")
	mta := netip.MustParseAddrPort("198.51.100.2:25")
	const secret = 0x5ec2e7
	const timeout = 150 * time.Millisecond
	for _, tc := range []struct {
		name    string
		answer  func(n int, q *rphd.Datagram) []byte
		kind    string // "" success
		ident   string
		queries int32
	}{
		{"found", func(n int, q *rphd.Datagram) []byte {
			if q.Magic != rphd.Magic || q.Secret != secret || q.Version != rphd.Version || q.Flags != rphd.FlagQuery ||
				netip.AddrFrom4(q.Src) != client.Addr() || q.SrcPort != client.Port() ||
				netip.AddrFrom4(q.Dst) != local.Addr() || q.DstPort != local.Port() || q.IdentString() != "" {
				t.Errorf("query %+v", q)
			}
			return found(q, mta, "10.9.0.2")
		}, "", "10.9.0.2", 1},
		{"ident cleaned", func(n int, q *rphd.Datagram) []byte { return found(q, mta, "al ice\r\n/x") }, "", "al_ice___x", 1},
		{"second query answered", func(n int, q *rphd.Datagram) []byte {
			if n == 1 {
				return nil
			}
			return found(q, mta, "bob")
		}, "", "bob", 2},
		{"wrong cookie", func(n int, q *rphd.Datagram) []byte {
			q.Cookie++
			return found(q, mta, "x")
		}, ipc.LookupMismatch, "", 3},
		{"wrong cookie then right", func(n int, q *rphd.Datagram) []byte {
			if n == 1 {
				r := *q
				r.Cookie ^= 1
				return found(&r, mta, "x")
			}
			return found(q, mta, "carol")
		}, "", "carol", 2},
		{"wrong secret", func(n int, q *rphd.Datagram) []byte {
			q.Secret = 1
			return found(q, mta, "x")
		}, ipc.LookupMismatch, "", 3},
		{"wrong magic", func(n int, q *rphd.Datagram) []byte {
			q.Magic = 0x12345678
			return found(q, mta, "x")
		}, ipc.LookupMismatch, "", 3},
		{"short datagram", func(n int, q *rphd.Datagram) []byte { return found(q, mta, "x")[:60] }, ipc.LookupMismatch, "", 3},
		{"notfound", func(n int, q *rphd.Datagram) []byte {
			r := *q
			r.Flags = rphd.FlagReply | rphd.FlagNotFound
			return r.Marshal()
		}, ipc.LookupNotFound, "", 1},
		{"neither found nor notfound", func(n int, q *rphd.Datagram) []byte {
			r := *q
			r.Flags = rphd.FlagReply
			return r.Marshal()
		}, ipc.LookupMismatch, "", 1},
		{"other version", func(n int, q *rphd.Datagram) []byte {
			q.Version = 0x0401
			return found(q, mta, "x")
		}, ipc.LookupMismatch, "", 1},
		{"destination 224.0.0.1", func(n int, q *rphd.Datagram) []byte {
			return found(q, netip.MustParseAddrPort("224.0.0.1:25"), "x")
		}, ipc.LookupMalformed, "", 1},
		{"destination port 0", func(n int, q *rphd.Datagram) []byte {
			return found(q, netip.MustParseAddrPort("198.51.100.2:0"), "x")
		}, ipc.LookupMalformed, "", 1},
		{"silence", func(n int, q *rphd.Datagram) []byte { return nil }, ipc.LookupTimeout, "", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, queries := scriptedHelper(t, tc.answer)
			start := time.Now()
			dst, ident, err := remoteUDP(client, local, port, secret, 3, timeout)
			took := time.Since(start)
			if tc.kind == "" {
				if err != nil || dst != mta || ident != tc.ident {
					t.Errorf("got %v, %q, %v; want %v, %q", dst, ident, err, mta, tc.ident)
				}
			} else {
				var le *lookupError
				if !errors.As(err, &le) || le.kind != tc.kind {
					t.Errorf("got %v, %q, %v; want a failure of kind %q", dst, ident, err, tc.kind)
				}
			}
			if n := queries.Load(); n != tc.queries {
				t.Errorf("the helper got %d queries, want %d", n, tc.queries)
			}
			if tc.kind == ipc.LookupTimeout && (took < 3*timeout || took > 3*timeout+time.Second) {
				t.Errorf("all-silence took %v, want about 3 × %v", took, timeout)
			}
		})
	}
	t.Run("no helper", func(t *testing.T) {
		pc, _ := net.ListenPacket("udp4", "127.0.0.1:0")
		port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		pc.Close()
		_, _, err := remoteUDP(client, local, port, secret, 3, timeout)
		var le *lookupError
		if !errors.As(err, &le) || (le.kind != ipc.LookupFailed && le.kind != ipc.LookupTimeout) {
			t.Errorf("got %v, want a failure", err)
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		_, _, err := remoteUDP(netip.MustParseAddrPort("[::1]:4000"), netip.MustParseAddrPort("[::1]:9199"), 114, secret, 3, timeout)
		var le *lookupError
		if !errors.As(err, &le) || le.kind != ipc.LookupFailed {
			t.Errorf("got %v, want a failure", err)
		}
	})
}

// scriptedIdent answers remote (TCP) queries with answer(request line).
func scriptedIdent(t *testing.T, answer func(req string) string) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 100)
				n, _ := c.Read(buf)
				a := answer(string(buf[:n]))
				if a == "" {
					time.Sleep(time.Second)
					return
				}
				c.Write([]byte(a))
			}()
		}
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func TestRemoteTCP(t *testing.T) {
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	local := netip.MustParseAddrPort("127.0.0.1:9199")
	for _, tc := range []struct {
		name, answer string
		kind         string
		dst, ident   string
	}{
		{"origin", "40000 , 9199 : ORIGIN : 198.51.100.2 : 25 : alice\r\n", "", "198.51.100.2:25", "alice"},
		{"no spaces, long ident", "40000,9199:ORIGIN:198.51.100.2:587:abcdefghijklmnopqrstuvwxyz", "", "198.51.100.2:587", "abcdefghijklmnopqrst"},
		{"error", "40000 , 9199 : ERROR : NO-USER\r\n", ipc.LookupNotFound, "", ""},
		{"other ports", "40001 , 9199 : ORIGIN : 198.51.100.2 : 25 : alice\r\n", ipc.LookupMismatch, "", ""},
		{"bad address", "40000 , 9199 : ORIGIN : 198.51.100 : 25 : alice\r\n", ipc.LookupMalformed, "", ""},
		{"garbage", "hello\r\n", ipc.LookupMismatch, "", ""},
		{"silence", "", ipc.LookupTimeout, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req atomic.Value
			port := scriptedIdent(t, func(r string) string { req.Store(r); return tc.answer })
			dst, ident, err := remoteTCP(client, local, port, 300*time.Millisecond)
			if tc.kind == "" {
				if err != nil || dst.String() != tc.dst || ident != tc.ident {
					t.Errorf("got %v, %q, %v; want %s, %q", dst, ident, err, tc.dst, tc.ident)
				}
			} else {
				var le *lookupError
				if !errors.As(err, &le) || le.kind != tc.kind {
					t.Errorf("got %v, %q, %v; want a failure of kind %q", dst, ident, err, tc.kind)
				}
			}
			if r, _ := req.Load().(string); r != "40000 , 9199\r\n" {
				t.Errorf("the helper got %q, want %q", r, "40000 , 9199\r\n")
			}
		})
	}
}

func TestCleanIdent(t *testing.T) {
	for in, want := range map[string]string{"alice": "alice", "a.b-c_d+e=f@g": "a.b-c_d+e=f@g",
		"x y": "x_y", "../etc": "_._etc", "a\r\nX-Evil: 1": "a__X-Evil__1", "ünï": "__n__"} {
		if got := cleanIdent(in); got != want {
			t.Errorf("cleanIdent(%q) = %q, want %q", in, got, want)
		}
	}
	if strings.ContainsAny(cleanIdent("\x00\t\r\n /"), "\x00\t\r\n /") {
		t.Error("control characters survive")
	}
}

func TestIsLoop(t *testing.T) {
	proxy := netip.MustParseAddrPort("192.0.2.1:9199")
	mta := netip.MustParseAddrPort("198.51.100.2:25")
	for _, tc := range []struct {
		mode       string
		dst, local netip.AddrPort
		want       bool
	}{
		{"netfilter", proxy, proxy, true},
		{"netfilter", mta, proxy, false},
		{"tproxy", mta, mta, false},
		{"tproxy", proxy, proxy, true},
		{"getsockname", mta, mta, false},
		{"getsockname", proxy, proxy, true},
		{"remote-udp", proxy, proxy, true},
		{"pf", mta, proxy, false},
	} {
		cfg := testConfig(t, "mode "+tc.mode+"\nport 9199\n")
		if got := isLoop(cfg, tc.dst, tc.local); got != tc.want {
			t.Errorf("mode %s, dst %v, local %v: isLoop = %v, want %v", tc.mode, tc.dst, tc.local, got, tc.want)
		}
	}
}
