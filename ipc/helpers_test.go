package ipc

import (
	"net/netip"
	"os"
	"smtp-gated/internal/config"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// samples holds one payload per catalogue type, every field non-zero, so
// that a field that does not survive the trip shows up as a difference.
func samples() map[Type]any {
	v4 := netip.MustParseAddrPort("192.0.2.10:40123")
	v4b := netip.MustParseAddrPort("198.51.100.7:25")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:587")
	v6z := netip.MustParseAddrPort("[fe80::1%eth0]:2525")
	return map[Type]any{
		MsgHello: &Hello{Version: Version, Role: RoleSession, Index: 3,
			Config: "proxy_name smtp-gated\nport 9199\n", Foreground: true, Started: 1700000000, EmptyDir: "/var/empty/smtp-gated"},
		MsgReady:    &Ready{Version: Version, Pid: 4242},
		MsgConfig:   &Config{Config: "max_connections 64\n"},
		MsgAck:      &Ack{Err: "bad option \"foo\""},
		MsgPeerLink: &PeerLink{Role: RoleLookup, Index: 1},
		MsgNewSession: &NewSession{ID: 1<<40 + 7, Client: v4, Local: v6,
			Accepted: 1700000000123456789, Count: 17, HostCount: 3},
		MsgSessionEnd: &SessionEnd{ID: 1<<33 + 1, By: "client", ClientRx: 1 << 35,
			ServerRx: 12345, Direct: true, Empty: true, Transacts: 2, Spam: 1, Auth: 3, Events: EventSPF | EventPipeline},
		MsgSessions: &SessionsQuery{IDs: []uint64{1, 1<<40 + 3}},
		MsgSessionList: &SessionList{Rows: []SessionRow{{ID: 1<<36 + 2, State: "data", Target: v4b, Ident: "bob",
			Transaction: 3, Auth: 3, ClientRx: 1 << 34, ServerRx: 777}, {ID: 9, State: "helo", Target: v6}}},
		MsgKillSession: &KillSession{ID: 1<<39 + 11},
		MsgSpoofQuery:  &SpoofQuery{ID: 1<<34 + 5, Client: v6},
		MsgSpoofSocket: &SpoofSocket{Err: "bind: address already in use"},
		MsgDnsblQuery:  &DnsblQuery{ID: 1<<35 + 3, Addr: v6.Addr()},
		MsgDnsblAnswer: &DnsblAnswer{Zone: "bl.example", Answer: "127.0.0.2", Err: "zone2.example: i/o timeout"},
		MsgSpfQuery:    &SpfQuery{ID: 1<<36 + 1, IP: v4.Addr(), Helo: "client.example", Sender: "alice@example.org"},
		MsgSpfAnswer:   &SpfAnswer{Result: "softfail", Err: "matched all"},
		MsgDstQuery:    &DstQuery{Client: v6z, Local: v4b},
		MsgDstAnswer:   &DstAnswer{Dst: v6, Ident: "alice", Fail: LookupMismatch, Err: "no state"},
		MsgScan: &Scan{SessionID: 1<<41 + 9, Transaction: 2, Size: 10 << 20, Client: v6z,
			Skip: []string{"antivir", "antispam"}},
		MsgScanStart: &ScanStart{SessionID: 1<<41 + 10, Transaction: 3, Client: v4},
		MsgScanFinish: &Scan{SessionID: 1<<41 + 10, Transaction: 3, Size: 1<<33 + 1, Client: v6,
			Skip: []string{"antispam"}},
		MsgScanAbort: &ScanAbort{SessionID: 1<<42 + 1, Transaction: 7},
		MsgVerdict: &Verdict{Kind: VerdictSpam, Name: "Eicar-Test-Signature", Score: 1002.3,
			Scanned: []string{"clamd", "spamd"}, Err: "spamd: timed out"},
		MsgCtlRequest: &CtlRequest{Version: Version, Command: "kill", Args: []string{"12", "", "ünïcode"}},
		MsgCtlReply:   &CtlReply{Code: -1, Text: "no such session\n"},

		MsgPolicy: &Policy{ID: 1<<37 + 5, Client: v6, Ident: "alice", Lock: true,
			Add:   []Delta{{Name: RateBytes, N: 1 << 33}, {Name: RateMessages, N: -1}},
			Check: []string{RateBytes, RateMailfromRejects}, Take: []string{RateMessages}},
		MsgPolicyAnswer: &PolicyAnswer{Locked: true, Cause: "virus", Over: RateRecipients, Err: "read-only file system"},
		MsgFound: &Found{Event: config.LockVirus, ID: 1<<38 + 1, Client: v4, Local: v4b, Target: v6, Ident: "bob",
			IdentCount: 2, Detail: "Eicar-Test-Signature", Command: "RCPT", SpamScore: 1002.3, Helo: "client.example",
			MailFrom: "a@example.com", Rcpts: 3, Size: 1 << 34, Transaction: 2, Auth: 5,
			Spool: "/var/spool/smtp-gated/msg/1700000000.7", Start: 1700000000},
		MsgIdentQuery:  &IdentQuery{ID: 1<<39 + 3, Ident: "carol"},
		MsgIdentAnswer: &IdentAnswer{Count: 5, Over: true, Err: "no such session"},
		MsgLockdCtl:    &LockdCtl{Command: "ratelimit", Args: []string{"set", "192.0.2.1", "connections=5"}, UID: 1000},
		MsgLockdReply:  &CtlReply{Code: 5, Text: "192.0.2.1: not locked\n"},

		MsgSessionOpen:   &SessionOpen{ID: 1<<40 + 9, Worker: 3, Client: v6, Local: v4b, Ident: "dave"},
		MsgSessionClosed: &SessionClosed{ID: 1<<40 + 10},
		MsgSessionAsk:    &SessionAsk{ID: 1<<40 + 11},
		MsgSessionInfo:   &SessionInfo{Known: true, Worker: 2, Client: v4, Local: v6, Ident: "erin"},
		MsgBreach:        &Breach{Worker: 1, ID: 1<<40 + 12, Rule: "found for a client not the session's"},
		MsgPing:          &Ping{},
		MsgPong:          &Pong{},
		MsgSessionTaken:  &SessionTaken{ID: 1<<39 + 4},
		MsgPolicyGen:     &PolicyGen{Size: 4096},
	}
}

// connPair returns the two ends of a fresh Pair as Conns.
func connPair(t testing.TB) (a, b *Conn) {
	t.Helper()
	a, b, err := ConnPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// rawPair returns a raw, blocking SOCK_SEQPACKET descriptor for writing
// arbitrary packets with unix.Sendmsg, and a Conn on the other end.
func rawPair(t testing.TB) (raw int, c *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "test")
	defer f.Close()
	if c, err = NewConn(f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); c.Close() })
	return fds[0], c
}

// fdOf is f's descriptor, without putting it in blocking mode as Fd does.
// It stays valid while f is open.
func fdOf(t testing.TB, f *os.File) int {
	t.Helper()
	sc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	if err := sc.Control(func(u uintptr) { fd = int(u) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// openFDs counts the descriptors open in this process. ReadDir opens one
// of its own, the same on every call.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// sendmsg is sendmsg(2) without the help of unix.Sendmsg, which turns an
// empty packet with control data into a packet of one zero byte.
func sendmsg(fd int, p, oob []byte) error {
	var msg unix.Msghdr
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
		msg.Iov = &iov
		msg.Iovlen = 1
	}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	_, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// devNulls opens n descriptors to stand in for the ones that ride along.
func devNulls(t testing.TB, n int) []*os.File {
	t.Helper()
	var fs []*os.File
	for range n {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	return fs
}
