package ipc

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

func TestFDRoundTrip(t *testing.T) {
	a, b := connPair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	want := samples()[MsgNewSession]
	if err := a.Send(MsgNewSession, 0, false, want, fdOf(t, w)); err != nil {
		t.Fatal(err)
	}
	m, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Type != MsgNewSession || m.Reply || m.ID != 0 {
		t.Fatalf("got %v reply=%v id=%d, want NEW_SESSION reply=false id=0", m.Type, m.Reply, m.ID)
	}
	if !reflect.DeepEqual(m.Payload, want) {
		t.Fatalf("payload: got %+v, want %+v", m.Payload, want)
	}
	if len(m.Files) != 1 || m.Files[0] == nil {
		t.Fatalf("got %d files (%v), want 1", len(m.Files), m.Files)
	}
	got := m.Files[0]
	gotFD, wFD := fdOf(t, got), fdOf(t, w)
	if gotFD == wFD {
		t.Fatalf("received descriptor %d is the sent one, not a new one", gotFD)
	}

	// The same open file: same inode, and bytes written through the
	// received descriptor come out of the pipe's read end.
	var sg, sw unix.Stat_t
	if err := unix.Fstat(gotFD, &sg); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(wFD, &sw); err != nil {
		t.Fatal(err)
	}
	if sg.Dev != sw.Dev || sg.Ino != sw.Ino {
		t.Fatalf("received dev/ino %d/%d, sent %d/%d", sg.Dev, sg.Ino, sw.Dev, sw.Ino)
	}
	if _, err := got.Write([]byte("through the passed fd")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := r.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(buf[:n]); s != "through the passed fd" {
		t.Fatalf("pipe read %q, want %q", s, "through the passed fd")
	}

	// Close-on-exec, so that a re-executed child does not inherit it.
	fl, err := unix.FcntlInt(uintptr(gotFD), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.FD_CLOEXEC == 0 {
		t.Fatalf("received descriptor flags %#x: FD_CLOEXEC not set", fl)
	}

	// TakeFile hands it over once; Close then leaves it alone.
	if f := m.TakeFile(0); f != got {
		t.Fatalf("TakeFile(0) = %v, want %v", f, got)
	}
	if f := m.TakeFile(0); f != nil {
		t.Fatalf("second TakeFile(0) = %v, want nil", f)
	}
	if f := m.TakeFile(5); f != nil {
		t.Fatalf("TakeFile(5) = %v, want nil", f)
	}
	m.Close()
	if _, err := got.Write([]byte("x")); err != nil {
		t.Fatalf("taken file closed by Msg.Close: %v", err)
	}
	got.Close()
}

func TestPairCloseOnExec(t *testing.T) {
	fa, fb, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	defer fb.Close()
	c, err := NewConn(fa)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := c.UnixConn().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var connFD int
	sc.Control(func(u uintptr) { connFD = int(u) })
	for _, fd := range []int{fdOf(t, fa), fdOf(t, fb), connFD} {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fl&unix.FD_CLOEXEC == 0 {
			t.Errorf("descriptor %d flags %#x: FD_CLOEXEC not set", fd, fl)
		}
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			t.Fatal(err)
		}
		if typ != unix.SOCK_SEQPACKET {
			t.Errorf("descriptor %d socket type %d, want SOCK_SEQPACKET", fd, typ)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	a, b := connPair(t)
	all := samples()
	for typ, s := range catalogue {
		t.Run(s.name, func(t *testing.T) {
			want, ok := all[typ]
			if !ok {
				t.Fatalf("no sample payload for %v: add one to samples()", typ)
			}
			if wt, nt := reflect.TypeOf(want), reflect.TypeOf(s.new()); wt != nt {
				t.Fatalf("sample is %v, the catalogue says %v", wt, nt)
			}
			v := reflect.ValueOf(want).Elem()
			for i := range v.NumField() {
				if v.Field(i).IsZero() {
					t.Fatalf("sample field %s is zero: fill it", v.Type().Field(i).Name)
				}
			}
			files := devNulls(t, s.fds)
			var fds []int
			for _, f := range files {
				fds = append(fds, fdOf(t, f))
				defer f.Close()
			}
			id := uint32(typ)<<16 | 0xbeef
			for _, reply := range []bool{false, true} {
				if err := a.Send(typ, id, reply, want, fds...); err != nil {
					t.Fatal(err)
				}
				m, err := b.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if m.Type != typ || m.ID != id || m.Reply != reply {
					t.Errorf("got %v id %#x reply %v, want %v id %#x reply %v",
						m.Type, m.ID, m.Reply, typ, id, reply)
				}
				if !reflect.DeepEqual(m.Payload, want) {
					t.Errorf("payload: got %+v, want %+v", m.Payload, want)
				}
				if len(m.Files) != s.fds {
					t.Errorf("got %d files, want %d", len(m.Files), s.fds)
				}
				m.Close()
			}
			// A payload passed by value encodes the same.
			if err := a.Send(typ, 1, false, v.Interface(), fds...); err != nil {
				t.Fatal(err)
			}
			m, err := b.Recv()
			if err != nil {
				t.Fatal(err)
			}
			m.Close()
			if !reflect.DeepEqual(m.Payload, want) {
				t.Errorf("payload by value: got %+v, want %+v", m.Payload, want)
			}
		})
	}
}

func TestTypeString(t *testing.T) {
	for _, tc := range []struct {
		t    Type
		want string
	}{
		{MsgHello, "HELLO"},
		{MsgReady, "READY"},
		{MsgConfig, "CONFIG"},
		{MsgAck, "ACK"},
		{MsgPeerLink, "PEER_LINK"},
		{MsgNewSession, "NEW_SESSION"},
		{MsgSessionEnd, "SESSION_END"},
		{MsgDstQuery, "DST_QUERY"},
		{MsgDstAnswer, "DST_ANSWER"},
		{MsgCtlRequest, "CTL_REQUEST"},
		{MsgCtlReply, "CTL_REPLY"},
		{0, "UNKNOWN(0)"},
		{999, "UNKNOWN(999)"},
		{65535, "UNKNOWN(65535)"},
	} {
		if got := tc.t.String(); got != tc.want {
			t.Errorf("Type(%d).String() = %q, want %q", uint16(tc.t), got, tc.want)
		}
		if got, want := tc.t.Known(), !strings.HasPrefix(tc.want, "UNKNOWN"); got != want {
			t.Errorf("Type(%d).Known() = %v, want %v", uint16(tc.t), got, want)
		}
	}
	// Names are unique, so that a log line names one message.
	seen := map[string]Type{}
	for typ, s := range catalogue {
		if o, dup := seen[s.name]; dup {
			t.Errorf("%d and %d are both named %q", o, typ, s.name)
		}
		seen[s.name] = typ
		if s.fds < 0 || s.fds > MaxFDs {
			t.Errorf("%v carries %d descriptors, MaxFDs is %d", typ, s.fds, MaxFDs)
		}
	}
}

// packet builds a raw packet: header then body.
func packet(t Type, flags0, flags1 byte, id uint32, body []byte) []byte {
	p := make([]byte, headerLen, headerLen+len(body))
	binary.BigEndian.PutUint16(p[0:], uint16(t))
	p[2], p[3] = flags0, flags1
	binary.BigEndian.PutUint32(p[4:], id)
	return append(p, body...)
}

func mp(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRecvMalformed(t *testing.T) {
	ack := mp(t, &Ack{Err: "x"})
	ns := mp(t, samples()[MsgNewSession])
	for _, tc := range []struct {
		name string
		pkt  []byte
		nfds int    // descriptors sent along (each a fresh /dev/null)
		want string // in the error text
	}{
		{"empty with descriptor", nil, 1, "empty packet"},
		{"shorter than header", []byte{0, 4, 0}, 0, "shorter than the header"},
		{"header minus one", packet(MsgAck, 0, 0, 1, nil)[:headerLen-1], 0, "shorter than the header"},
		{"unknown type", packet(999, 0, 0, 1, ack), 0, "unknown message type 999"},
		{"type zero", packet(0, 0, 0, 1, ack), 0, "unknown message type 0"},
		{"unknown flag bit", packet(MsgAck, 2, 0, 1, ack), 0, "unknown header flags"},
		{"reserved flag byte", packet(MsgAck, flagReply, 0x80, 1, ack), 0, "unknown header flags"},
		{"header only", packet(MsgAck, 0, 0, 1, nil), 0, "ACK"},
		{"not msgpack", packet(MsgAck, 0, 0, 1, []byte{0xc1}), 0, "ACK"},
		{"text not msgpack", packet(MsgAck, 0, 0, 1, []byte("HELO x")), 0, "ACK"},
		{"wrong kind", packet(MsgAck, 0, 0, 1, mp(t, "just a string")), 0, "ACK"},
		{"field of wrong type", packet(MsgAck, 0, 0, 1, mp(t, map[string]any{"err": 7})), 0, "ACK"},
		{"unknown field", packet(MsgAck, 0, 0, 1, mp(t, map[string]any{"err": "", "extra": 1})), 0, `unknown field "extra"`},
		{"Go field name", packet(MsgReady, 0, 0, 1, mp(t, map[string]any{"Pid": 1})), 0, `unknown field "Pid"`},
		{"trailing bytes", packet(MsgAck, 0, 0, 1, append(append([]byte{}, ack...), 0)), 0, "1 bytes after the payload"},
		{"two payloads", packet(MsgAck, 0, 0, 1, append(append([]byte{}, ack...), ack...)), 0, "bytes after the payload"},
		{"fd missing", packet(MsgNewSession, 0, 0, 0, ns), 0, "NEW_SESSION with 0 descriptors"},
		{"fd unexpected", packet(MsgAck, flagReply, 0, 9, ack), 1, "ACK with 1 descriptors"},
		{"fd one too many", packet(MsgNewSession, 0, 0, 0, ns), 2, "NEW_SESSION with 2 descriptors"},
		{"many fds", packet(MsgNewSession, 0, 0, 0, ns), 5, "with 5 descriptors"},
		{"control data truncated", packet(MsgNewSession, 0, 0, 0, ns), 40, "truncated"},
		{"fds on a bad packet", packet(999, 0, 0, 0, ack), 2, "unknown message type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, c := rawPair(t)
			files := devNulls(t, tc.nfds)
			var oob []byte
			if len(files) > 0 {
				var fds []int
				for _, f := range files {
					fds = append(fds, fdOf(t, f))
				}
				oob = unix.UnixRights(fds...)
			}
			before := openFDs(t)
			if err := sendmsg(raw, tc.pkt, oob); err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				f.Close()
			}
			m, err := c.Recv()
			if err == nil {
				m.Close()
				t.Fatalf("accepted %v %+v, want an error", m.Type, m.Payload)
			}
			if m != nil {
				t.Errorf("got a message %+v with the error", m)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %q does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			// The sender's copies are closed; what came must have been
			// closed by Recv.
			if after := openFDs(t); after != before-tc.nfds {
				t.Errorf("%d descriptors open after, %d before less the %d sent: Recv leaked %d",
					after, before, tc.nfds, after-(before-tc.nfds))
			}
		})
	}
}

func TestRecvOversized(t *testing.T) {
	for _, size := range []int{MaxPacket + 1, MaxPacket + 100, 2 * MaxPacket} {
		raw, c := rawPair(t)
		// Let the raw end send more than the kernel's default allows.
		if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_SNDBUF, 4*MaxPacket); err != nil {
			t.Fatal(err)
		}
		body := mp(t, &Config{Config: strings.Repeat("#", size)})
		pkt := packet(MsgConfig, 0, 0, 1, body)[:size]
		if err := unix.Sendmsg(raw, pkt, nil, nil, 0); err != nil {
			t.Fatalf("sending %d bytes: %v", size, err)
		}
		m, err := c.Recv()
		if err == nil {
			m.Close()
			t.Fatalf("%d bytes: accepted, want a truncation error", size)
		}
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("%d bytes: error %q, want ErrMalformed, truncated", size, err)
		}
	}
}

func TestSendLimits(t *testing.T) {
	a, b := connPair(t)

	// The largest packet Send accepts, MaxPacket bytes, goes through
	// (the kernel's default send buffer is smaller than that).
	overhead := headerLen + len(mp(t, &Config{Config: strings.Repeat("a", 1<<17)})) - 1<<17
	big := &Config{Config: strings.Repeat("a", MaxPacket-overhead)}
	if p, err := encodePacket(MsgConfig, 1, false, big); err != nil || len(p) != MaxPacket {
		t.Fatalf("encodePacket: %d bytes, %v; want %d", len(p), err, MaxPacket)
	}
	if err := a.Send(MsgConfig, 1, false, big); err != nil {
		t.Fatalf("Send of exactly MaxPacket bytes: %v", err)
	}
	m, err := b.Recv()
	if err != nil {
		t.Fatalf("Recv of exactly MaxPacket bytes: %v", err)
	}
	if !reflect.DeepEqual(m.Payload, big) {
		t.Fatalf("MaxPacket payload changed on the way")
	}

	// One byte more is refused by Send, and nothing is sent.
	bigger := &Config{Config: big.Config + "a"}
	if err := a.Send(MsgConfig, 2, false, bigger); err == nil {
		t.Fatal("Send of MaxPacket+1 bytes: no error")
	} else if !strings.Contains(err.Error(), "more than") {
		t.Errorf("Send of MaxPacket+1 bytes: error %q", err)
	}
	if err := a.Send(MsgConfig, 3, false, &Config{Config: strings.Repeat("z", 4*MaxPacket)}); err == nil {
		t.Fatal("Send of 4*MaxPacket bytes: no error")
	}

	// Descriptors that do not match the catalogue, and unknown types.
	f := devNulls(t, 1)[0]
	defer f.Close()
	for _, tc := range []struct {
		name string
		t    Type
		v    any
		fds  []int
	}{
		{"fd missing", MsgNewSession, &NewSession{}, nil},
		{"fd unexpected", MsgAck, &Ack{}, []int{fdOf(t, f)}},
		{"two fds", MsgDstQuery, &DstQuery{}, []int{fdOf(t, f), fdOf(t, f)}},
		{"unknown type", 999, &Ack{}, nil},
		{"not encodable", MsgAck, make(chan int), nil},
	} {
		if err := a.Send(tc.t, 4, false, tc.v, tc.fds...); err == nil {
			t.Errorf("%s: Send returned no error", tc.name)
		}
	}

	// Nothing of the refused sends reached the other end.
	if err := a.Send(MsgAck, 5, true, &Ack{Err: "after"}); err != nil {
		t.Fatal(err)
	}
	m, err = b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != 5 {
		t.Fatalf("next message has id %d, want 5: a refused Send wrote something", m.ID)
	}
}

func TestRecvEOF(t *testing.T) {
	a, b := connPair(t)
	if err := a.Send(MsgAck, 1, true, &Ack{}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	// What was sent before the close is still delivered.
	if m, err := b.Recv(); err != nil || m.ID != 1 {
		t.Fatalf("Recv = %v, %v; want the message sent before the close", m, err)
	}
	for range 2 {
		if m, err := b.Recv(); err != io.EOF {
			t.Fatalf("Recv after the peer closed = %v, %v; want io.EOF", m, err)
		}
	}
	// The Conn's own Close also ends Recv with io.EOF.
	b.Close()
	if m, err := b.Recv(); err != io.EOF {
		t.Fatalf("Recv after Close = %v, %v; want io.EOF", m, err)
	}
	// An empty packet without descriptors cannot be told from the end of
	// the link: it ends it.
	raw, c := rawPair(t)
	if err := unix.Sendmsg(raw, nil, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Recv(); err != io.EOF {
		t.Fatalf("Recv of an empty packet = %v, %v; want io.EOF", m, err)
	}
}

// noGC stops the collector for the rest of the test: an *os.File that
// nobody closed would otherwise be closed by its cleanup when collected,
// and hide the leak the test is looking for.
func noGC(t *testing.T) {
	old := debug.SetGCPercent(-1)
	t.Cleanup(func() { debug.SetGCPercent(old) })
}

// passMany sends n NEW_SESSION messages, each with one end of a fresh
// socketpair that the sender closes right after sending, and gives each
// received message to recv.
func passMany(t *testing.T, n int, recv func(m *Msg)) {
	a, b := connPair(t)
	noGC(t)
	before := openFDs(t)
	errc := make(chan error, 1)
	go func() {
		payload := samples()[MsgNewSession]
		for i := range n {
			sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				errc <- err
				return
			}
			err = a.Send(MsgNewSession, uint32(i), false, payload, sp[0])
			unix.Close(sp[0])
			unix.Close(sp[1])
			if err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	peak := 0
	for i := range n {
		m, err := b.Recv()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.ID != uint32(i) || len(m.Files) != 1 || m.Files[0] == nil {
			t.Fatalf("message %d: id %d, files %v", i, m.ID, m.Files)
		}
		recv(m)
		if i%500 == 0 {
			peak = max(peak, openFDs(t)-before)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d descriptors open after %d messages, %d before: %d leaked", after, n, before, after-before)
	}
	// In flight there are at most a few dozen (the socket's queue).
	if peak > 100 {
		t.Errorf("up to %d more descriptors open while passing: they pile up", peak)
	}
}

func TestNoFDLeakTakeFile(t *testing.T) {
	passMany(t, 10000, func(m *Msg) {
		f := m.TakeFile(0)
		if f == nil {
			t.Fatal("TakeFile(0) = nil")
		}
		m.Close() // must not close the taken file twice or touch it
		if err := f.Close(); err != nil {
			t.Fatalf("closing the taken file: %v", err)
		}
	})
}

func TestNoFDLeakMsgClose(t *testing.T) {
	passMany(t, 10000, func(m *Msg) {
		f := m.Files[0]
		m.Close()
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("file after Msg.Close: Close = %v, want os.ErrClosed", err)
		}
	})
}

// A peer that closes with packets of ours still unread makes the kernel
// report ECONNRESET before the packets it sent us; they must still be
// delivered, then io.EOF.
func TestRecvPeerClosedWithUnread(t *testing.T) {
	a, b := connPair(t)
	for i := range 3 {
		if err := a.Send(MsgSessionEnd, uint32(i), false, samples()[MsgSessionEnd]); err != nil {
			t.Fatal(err)
		}
	}
	f := devNulls(t, 1)[0]
	defer f.Close()
	if err := b.Send(MsgNewSession, 7, false, samples()[MsgNewSession], fdOf(t, f)); err != nil {
		t.Fatal(err)
	}
	a.Close() // with the NEW_SESSION unread
	for i := range 3 {
		m, err := b.Recv()
		if err != nil {
			t.Fatalf("message %d sent before the close: %v", i, err)
		}
		if m.ID != uint32(i) {
			t.Fatalf("got id %d, want %d", m.ID, i)
		}
	}
	if m, err := b.Recv(); err != io.EOF {
		t.Fatalf("Recv after the peer closed = %v, %v; want io.EOF", m, err)
	}
}
