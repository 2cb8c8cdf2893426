// Package ipc carries messages between the processes of smtp-gated: one
// SOCK_SEQPACKET socketpair per pair of processes, one msgpack message per
// packet, descriptors alongside with SCM_RIGHTS. The catalogue of messages
// is msg.go.
package ipc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"golang.org/x/sys/unix"
)

// MaxPacket is the largest packet, header included. A configuration is the
// largest payload; it stays far below this.
const MaxPacket = 256 * 1024

// MaxFDs is the most descriptors one packet may carry.
const MaxFDs = 2

const headerLen = 8

// Header flags.
const flagReply = 1

// ErrMalformed marks a packet that does not follow the catalogue. The
// receiving process must treat it as fatal for that link.
var ErrMalformed = errors.New("malformed message")

// Msg is one received message. Payload is a pointer to the catalogue's
// struct for Type. Files are the descriptors that rode along; whoever takes
// one out of Files owns it, and Close closes the rest.
type Msg struct {
	Type    Type
	ID      uint32
	Reply   bool
	Payload any
	Files   []*os.File
}

// Close closes every descriptor still in m.Files.
func (m *Msg) Close() {
	for i, f := range m.Files {
		if f != nil {
			f.Close()
			m.Files[i] = nil
		}
	}
}

// TakeFile hands the i-th descriptor to the caller, who must close it.
func (m *Msg) TakeFile(i int) *os.File {
	if i >= len(m.Files) {
		return nil
	}
	f := m.Files[i]
	m.Files[i] = nil
	return f
}

// Conn is one end of a SOCK_SEQPACKET link. Send may be called from many
// goroutines; Recv from one.
type Conn struct {
	uc  *net.UnixConn
	buf []byte
	oob []byte
	max int // the largest packet Recv takes; MaxPacket when 0
	wmu sync.Mutex
}

// LimitRecv makes Recv refuse packets larger than n bytes (at most
// MaxPacket), reading into a buffer of that size: for a link whose other
// end is not trusted with master's memory, such as a control connection.
// Call it before the first Recv.
func (c *Conn) LimitRecv(n int) {
	if n > 0 && n < MaxPacket {
		c.max = n
	}
}

// Pair makes a connected pair of close-on-exec SOCK_SEQPACKET sockets.
func Pair() (a, b *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "ipc"), os.NewFile(uintptr(fds[1]), "ipc"), nil
}

// ConnPair returns the two ends of a new Pair as Conns, for a process
// that keeps both (a test plays the other process).
func ConnPair() (a, b *Conn, err error) {
	fa, fb, err := Pair()
	if err != nil {
		return nil, nil, err
	}
	defer fa.Close()
	defer fb.Close()
	if a, err = NewConn(fa); err != nil {
		return nil, nil, err
	}
	if b, err = NewConn(fb); err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// NewConn makes a Conn from a SOCK_SEQPACKET socket. f is duplicated and
// may be closed by the caller.
func NewConn(f *os.File) (*Conn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("ipc: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("ipc: %T is not a unix socket", c)
	}
	return FromUnixConn(uc), nil
}

// FromUnixConn makes a Conn from a connected unixpacket socket.
func FromUnixConn(uc *net.UnixConn) *Conn {
	// Linux refuses a SOCK_SEQPACKET packet larger than the send buffer
	// less 32 bytes, and the default buffer (net.core.wmem_default,
	// 212992) is smaller than MaxPacket: without this, a legal packet of
	// 210-256 KiB would fail with EMSGSIZE. The kernel doubles the value
	// and caps it at net.core.wmem_max; if that fails too, Send says so.
	_ = uc.SetWriteBuffer(MaxPacket + 4096)
	return &Conn{uc: uc}
}

// Close closes the link; the peer reads end-of-file.
func (c *Conn) Close() error { return c.uc.Close() }

// UnixConn is the underlying socket (for peer credentials).
func (c *Conn) UnixConn() *net.UnixConn { return c.uc }

// Send writes one message. fds are duplicated by the kernel on their way;
// the caller still owns and closes them.
func (c *Conn) Send(t Type, id uint32, reply bool, payload any, fds ...int) error {
	s, ok := catalogue[t]
	if !ok {
		return fmt.Errorf("ipc: send %v: not in the catalogue", t)
	}
	if len(fds) != s.fds && !(optionalFDs[t] && len(fds) == 0) {
		return fmt.Errorf("ipc: send %v: %d descriptors, the catalogue says %d", t, len(fds), s.fds)
	}
	p, err := encodePacket(t, id, reply, payload)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.wmu.Lock()
	_, _, err = c.uc.WriteMsgUnix(p, oob, nil)
	c.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("ipc: send %v: %w", t, err)
	}
	return nil
}

// encodePacket makes the packet Send writes: the header, then the payload.
// It is the inverse of decodePacket.
func encodePacket(t Type, id uint32, reply bool, payload any) ([]byte, error) {
	var b bytes.Buffer
	var hdr [headerLen]byte
	binary.BigEndian.PutUint16(hdr[0:], uint16(t))
	if reply {
		hdr[2] = flagReply
	}
	binary.BigEndian.PutUint32(hdr[4:], id)
	b.Write(hdr[:])
	enc := msgpack.GetEncoder()
	enc.Reset(&b)
	err := enc.Encode(payload)
	msgpack.PutEncoder(enc)
	if err != nil {
		return nil, fmt.Errorf("ipc: encode %v: %w", t, err)
	}
	if b.Len() > MaxPacket {
		return nil, fmt.Errorf("ipc: send %v: %d bytes, more than %d", t, b.Len(), MaxPacket)
	}
	return b.Bytes(), nil
}

// Recv reads one message. It returns io.EOF when the peer has closed the
// link, and an error wrapping ErrMalformed for a packet that breaks the
// catalogue (unknown type, wrong descriptors, a payload that does not
// decode, truncation); any descriptors of such a packet are closed.
func (c *Conn) Recv() (*Msg, error) {
	limit := MaxPacket
	if c.max > 0 {
		limit = c.max
	}
	if c.buf == nil {
		c.buf = make([]byte, limit+1)
		c.oob = make([]byte, unix.CmsgSpace(4*MaxFDs)+64)
	}
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.buf, c.oob)
	if errors.Is(err, unix.ECONNRESET) {
		// The peer closed with packets of ours unread. Linux reports that
		// once, ahead of the packets the peer sent before closing (its
		// last SESSION_END, say): read on, to deliver them and then the
		// end of the link.
		n, oobn, flags, _, err = c.uc.ReadMsgUnix(c.buf, c.oob)
	}
	// A read of zero bytes is the peer's end of the link, which the net
	// package reports as a wrapped io.EOF. (An empty packet reads the
	// same; it is not a message either, so it ends the link too.) Whatever
	// descriptors came with it are still ours to close, below.
	eof := n == 0 && errors.Is(err, io.EOF)
	if err != nil && !eof {
		if errors.Is(err, net.ErrClosed) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("ipc: recv: %w", err)
	}
	files, ferr := parseRights(c.oob[:oobn])
	m := &Msg{Files: files}
	fail := func(format string, a ...any) (*Msg, error) {
		m.Close()
		return nil, fmt.Errorf("ipc: %w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	if ferr != nil {
		return fail("%v", ferr)
	}
	if eof {
		if oobn != 0 {
			return fail("empty packet with %d descriptors", len(files))
		}
		return nil, io.EOF
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > limit {
		return fail("packet truncated (more than %d bytes or %d descriptors)", limit, MaxFDs)
	}
	return decodePacket(c.buf[:n], m)
}

// decodePacket checks one packet against the catalogue and fills m.
func decodePacket(p []byte, m *Msg) (*Msg, error) {
	fail := func(format string, a ...any) (*Msg, error) {
		m.Close()
		return nil, fmt.Errorf("ipc: %w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	if len(p) < headerLen {
		return fail("packet of %d bytes is shorter than the header", len(p))
	}
	m.Type = Type(binary.BigEndian.Uint16(p[0:]))
	m.Reply = p[2]&flagReply != 0
	m.ID = binary.BigEndian.Uint32(p[4:])
	if p[2]&^flagReply != 0 || p[3] != 0 {
		return fail("%v: unknown header flags %#x %#x", m.Type, p[2], p[3])
	}
	s, ok := catalogue[m.Type]
	if !ok {
		return fail("unknown message type %d", uint16(m.Type))
	}
	if len(m.Files) != s.fds && !(optionalFDs[m.Type] && len(m.Files) == 0) {
		return fail("%v with %d descriptors, the catalogue says %d", m.Type, len(m.Files), s.fds)
	}
	v := s.new()
	r := bytes.NewReader(p[headerLen:])
	dec := msgpack.GetDecoder()
	dec.Reset(r)
	dec.DisallowUnknownFields(true)
	err := dec.Decode(v)
	msgpack.PutDecoder(dec)
	if err != nil {
		return fail("%v: %v", m.Type, err)
	}
	if r.Len() != 0 {
		return fail("%v: %d bytes after the payload", m.Type, r.Len())
	}
	m.Payload = v
	return m, nil
}

// parseRights returns the descriptors of SCM_RIGHTS messages, made
// close-on-exec (Linux and OpenBSD receive them so already).
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %w", err)
	}
	var files []*os.File
	var bad error
	for i := range cmsgs {
		fds, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			bad = fmt.Errorf("control message: %w", err)
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "passed"))
		}
	}
	if bad != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, bad
	}
	return files, nil
}
