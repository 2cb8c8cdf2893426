// Package sinkmta is a fast SMTP sink for tests and benchmarks: it accepts
// every message (except the test rules below), counts messages, recipients
// and bytes, and can keep the last N messages for verification.
//
// It speaks enough ESMTP for a proxy in front of it: a 220 greeting; EHLO
// (PIPELINING, 8BITMIME, SIZE, ENHANCEDSTATUSCODES) and HELO; MAIL (with a
// SIZE= check), RCPT, DATA, RSET, NOOP, VRFY, HELP, QUIT. Pipelined commands
// are answered in order and replies are flushed only when no more input is
// buffered, as RFC 2920 servers do. The end of DATA is a line that is exactly
// ".\r\n"; a leading dot is removed from every other line that has one.
//
// The recipient rules mirror test/peers/postfix.sh: reject@... gets
// 550 5.1.1 and tempfail@... gets 450 4.2.0 at RCPT.
package sinkmta

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxSize is the SIZE advertised and enforced unless SetMaxSize
// changes it (100 MB).
const DefaultMaxSize = 100 << 20

const (
	readBufSize  = 32 << 10
	writeBufSize = 4 << 10
	cmdTimeout   = 5 * time.Minute  // idle time allowed between commands
	dataTimeout  = 30 * time.Minute // time allowed for one DATA body
)

// Message is one accepted message, kept when KeepBodies is enabled.
type Message struct {
	From string   // MAIL FROM address, without <>
	To   []string // accepted RCPT TO addresses, without <>
	Body []byte   // the message as received, dot-unstuffed, CRLF line endings
}

// Stats is a snapshot of the counters.
type Stats struct {
	Connections int64 // connections accepted
	Messages    int64 // messages accepted (250 after DATA)
	Recipients  int64 // recipients of the accepted messages
	Bytes       int64 // size of the accepted messages, dot-unstuffed, CRLF included
}

// Sink is a running SMTP sink.
type Sink struct {
	ln       net.Listener
	hostname string
	maxSize  atomic.Int64

	conns, msgs, rcpts, bytes atomic.Int64

	keepN   atomic.Int64 // mirror of keep, read without the lock
	deliver atomic.Pointer[func(Message)]
	waiters atomic.Int64 // WaitMessages calls in progress

	mu    sync.Mutex
	keep  int
	kept  []Message // ring, oldest first once full
	next  int       // next slot to overwrite when len(kept) == keep
	open  map[net.Conn]struct{}
	done  bool
	wg    sync.WaitGroup
	msgCh chan struct{} // closed and replaced on every accepted message
}

// Start listens on addr ("127.0.0.1:0" for any free port) and serves until
// Close.
func Start(addr string) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return Serve(ln), nil
}

// Serve serves on an existing listener until Close.
func Serve(ln net.Listener) *Sink {
	s := &Sink{ln: ln, hostname: "sinkmta.test", open: map[net.Conn]struct{}{}, msgCh: make(chan struct{})}
	s.maxSize.Store(DefaultMaxSize)
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

// Addr returns the listening address ("127.0.0.1:PORT").
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// SetMaxSize changes the advertised and enforced SIZE (bytes; 0: no limit,
// and "SIZE" is advertised without a number).
func (s *Sink) SetMaxSize(n int64) { s.maxSize.Store(n) }

// KeepBodies makes the sink keep the last n accepted messages (0, the
// default, keeps none: the fastest mode). Changing it drops what was kept.
func (s *Sink) KeepBodies(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keep, s.kept, s.next = n, nil, 0
	s.keepN.Store(int64(n))
}

// OnMessage makes the sink call f with every message it accepts, before
// it answers 250 (nil: no call).
func (s *Sink) OnMessage(f func(Message)) {
	if f == nil {
		s.deliver.Store(nil)
		return
	}
	s.deliver.Store(&f)
}

// Kept returns the kept messages, oldest first.
func (s *Sink) Kept() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, 0, len(s.kept))
	out = append(out, s.kept[s.next:]...)
	return append(out, s.kept[:s.next]...)
}

// Bodies returns the bodies of the kept messages, oldest first.
func (s *Sink) Bodies() [][]byte {
	var out [][]byte
	for _, m := range s.Kept() {
		out = append(out, m.Body)
	}
	return out
}

// Messages returns the number of messages accepted.
func (s *Sink) Messages() int64 { return s.msgs.Load() }

// Recipients returns the number of recipients of the accepted messages.
func (s *Sink) Recipients() int64 { return s.rcpts.Load() }

// Bytes returns the total size of the accepted messages (dot-unstuffed,
// CRLF included, the final ".\r\n" excluded).
func (s *Sink) Bytes() int64 { return s.bytes.Load() }

// Connections returns the number of connections accepted.
func (s *Sink) Connections() int64 { return s.conns.Load() }

// Open returns the number of connections open now.
func (s *Sink) Open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.open)
}

// Stats returns all counters.
func (s *Sink) Stats() Stats {
	return Stats{Connections: s.conns.Load(), Messages: s.msgs.Load(), Recipients: s.rcpts.Load(), Bytes: s.bytes.Load()}
}

// Reset sets the counters to zero and drops the kept messages.
func (s *Sink) Reset() {
	s.conns.Store(0)
	s.msgs.Store(0)
	s.rcpts.Store(0)
	s.bytes.Store(0)
	s.mu.Lock()
	s.kept, s.next = nil, 0
	s.mu.Unlock()
}

// WaitMessages waits until at least n messages were accepted since the start
// (or the last Reset); false after timeout.
func (s *Sink) WaitMessages(n int64, timeout time.Duration) bool {
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		ch := s.msgCh
		s.mu.Unlock()
		if s.msgs.Load() >= n {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return s.msgs.Load() >= n
		}
	}
}

// Close stops listening, closes every open connection and waits for their
// goroutines to finish.
func (s *Sink) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.done = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Sink) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off like net/http, then go on.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay *= 2; delay > time.Second {
				delay = time.Second
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.open[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.conns.Add(1)
		go s.serve(c)
	}
}

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}
)

// session is one SMTP connection's state.
type session struct {
	s      *Sink
	c      net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	helo   bool
	inMail bool
	nrcpt  int
	from   []byte   // only filled when keeping messages
	to     [][]byte // idem
	keep   bool
}

var (
	replyGreetingTail = []byte(" ESMTP sinkmta\r\n")
	reply250Ok        = []byte("250 2.0.0 Ok\r\n")
	reply250MailOk    = []byte("250 2.1.0 Ok\r\n")
	reply250RcptOk    = []byte("250 2.1.5 Ok\r\n")
	reply250Queued    = []byte("250 2.0.0 Ok: queued\r\n")
	reply354          = []byte("354 End data with <CR><LF>.<CR><LF>\r\n")
	reply221          = []byte("221 2.0.0 Bye\r\n")
	reply214          = []byte("214 2.0.0 sinkmta: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n")
	reply252          = []byte("252 2.0.0 Cannot VRFY user, but will accept message\r\n")
	reply450Tempfail  = []byte("450 4.2.0 <tempfail>: temporary failure by sinkmta test rule\r\n")
	reply500TooLong   = []byte("500 5.5.0 Line too long\r\n")
	reply501Helo      = []byte("501 5.5.4 Syntax: HELO/EHLO hostname\r\n")
	reply501Mail      = []byte("501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
	reply501Rcpt      = []byte("501 5.5.4 Syntax: RCPT TO:<address>\r\n")
	reply501Size      = []byte("501 5.5.4 Bad SIZE parameter\r\n")
	reply502          = []byte("502 5.5.2 Error: command not recognized\r\n")
	reply503Helo      = []byte("503 5.5.1 Error: send HELO/EHLO first\r\n")
	reply503Nested    = []byte("503 5.5.1 Error: nested MAIL command\r\n")
	reply503NeedMail  = []byte("503 5.5.1 Error: need MAIL command\r\n")
	reply503NeedRcpt  = []byte("503 5.5.1 Error: need RCPT command\r\n")
	reply550Reject    = []byte("550 5.1.1 <reject>: rejected by sinkmta test rule\r\n")
	reply552Size      = []byte("552 5.3.4 Message size exceeds fixed limit\r\n")
	reply421Timeout   = []byte("421 4.4.2 sinkmta Error: timeout exceeded\r\n")
)

func (s *Sink) serve(c net.Conn) {
	r := readers.Get().(*bufio.Reader)
	w := writers.Get().(*bufio.Writer)
	r.Reset(c)
	w.Reset(c)
	ss := &session{s: s, c: c, r: r, w: w}
	defer func() {
		c.Close()
		r.Reset(nil)
		w.Reset(nil)
		readers.Put(r)
		writers.Put(w)
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	w.WriteString("220 ")
	w.WriteString(s.hostname)
	w.Write(replyGreetingTail)
	ss.loop()
}

func (ss *session) loop() {
	for {
		// Flush only when the client has nothing more buffered: a pipelined
		// batch gets its replies in one write.
		if ss.r.Buffered() == 0 {
			if ss.w.Flush() != nil {
				return
			}
		}
		ss.c.SetReadDeadline(time.Now().Add(cmdTimeout))
		line, err := ss.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// a command line longer than the buffer: discard it whole
			for err == bufio.ErrBufferFull {
				_, err = ss.r.ReadSlice('\n')
			}
			if err != nil {
				return
			}
			ss.w.Write(reply500TooLong)
			continue
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				ss.w.Write(reply421Timeout)
				ss.w.Flush()
			}
			return
		}
		if !ss.command(trimEOL(line)) {
			ss.w.Flush()
			return
		}
	}
}

func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

// verb returns the upper-cased 4-letter verb of line (all verbs here have 4
// letters) and the rest after one space; ok is false for anything else.
func verb(line []byte) (v [4]byte, arg []byte, ok bool) {
	if len(line) < 4 || (len(line) > 4 && line[4] != ' ') {
		return v, nil, false
	}
	for i := range 4 {
		c := line[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		v[i] = c
	}
	if len(line) > 4 {
		arg = line[5:]
	}
	return v, arg, true
}

// command handles one command line; false ends the session.
func (ss *session) command(line []byte) bool {
	v, arg, ok := verb(line)
	if !ok {
		ss.w.Write(reply502)
		return true
	}
	switch string(v[:]) {
	case "EHLO":
		if len(bytes.TrimSpace(arg)) == 0 {
			ss.w.Write(reply501Helo)
			return true
		}
		ss.reset()
		ss.helo = true
		ss.w.WriteString("250-")
		ss.w.WriteString(ss.s.hostname)
		ss.w.WriteString("\r\n250-PIPELINING\r\n250-8BITMIME\r\n")
		if max := ss.s.maxSize.Load(); max > 0 {
			ss.w.WriteString("250-SIZE ")
			ss.w.WriteString(strconv.FormatInt(max, 10))
			ss.w.WriteString("\r\n")
		} else {
			ss.w.WriteString("250-SIZE\r\n")
		}
		ss.w.WriteString("250 ENHANCEDSTATUSCODES\r\n")
	case "HELO":
		if len(bytes.TrimSpace(arg)) == 0 {
			ss.w.Write(reply501Helo)
			return true
		}
		ss.reset()
		ss.helo = true
		ss.w.WriteString("250 ")
		ss.w.WriteString(ss.s.hostname)
		ss.w.WriteString("\r\n")
	case "MAIL":
		ss.mail(arg)
	case "RCPT":
		ss.rcpt(arg)
	case "DATA":
		return ss.data()
	case "RSET":
		ss.reset()
		ss.w.Write(reply250Ok)
	case "NOOP":
		ss.w.Write(reply250Ok)
	case "QUIT":
		ss.w.Write(reply221)
		return false
	case "VRFY":
		ss.w.Write(reply252)
	case "HELP":
		ss.w.Write(reply214)
	default:
		ss.w.Write(reply502)
	}
	return true
}

func (ss *session) reset() {
	ss.inMail, ss.nrcpt, ss.from, ss.to = false, 0, nil, nil
}

// hasPrefixFold reports whether b starts with the upper-case ASCII prefix p,
// ignoring case.
func hasPrefixFold(b []byte, p string) bool {
	if len(b) < len(p) {
		return false
	}
	for i := range len(p) {
		c := b[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != p[i] {
			return false
		}
	}
	return true
}

// path splits "<addr> PARAMS" (after FROM:/TO:, spaces allowed before '<').
func path(b []byte) (addr, params []byte, ok bool) {
	b = bytes.TrimLeft(b, " ")
	if len(b) == 0 || b[0] != '<' {
		return nil, nil, false
	}
	end := bytes.IndexByte(b, '>')
	if end < 0 {
		return nil, nil, false
	}
	return b[1:end], b[end+1:], true
}

func (ss *session) mail(arg []byte) {
	if !ss.helo {
		ss.w.Write(reply503Helo)
		return
	}
	if ss.inMail {
		ss.w.Write(reply503Nested)
		return
	}
	if !hasPrefixFold(arg, "FROM:") {
		ss.w.Write(reply501Mail)
		return
	}
	addr, params, ok := path(arg[5:])
	if !ok {
		ss.w.Write(reply501Mail)
		return
	}
	for p := range bytes.FieldsSeq(params) {
		if hasPrefixFold(p, "SIZE=") {
			n, err := strconv.ParseInt(string(p[5:]), 10, 64)
			if err != nil || n < 0 {
				ss.w.Write(reply501Size)
				return
			}
			if max := ss.s.maxSize.Load(); max > 0 && n > max {
				ss.w.Write(reply552Size)
				return
			}
		}
	}
	ss.keep = ss.s.keepN.Load() > 0 || ss.s.deliver.Load() != nil
	if ss.keep {
		ss.from = append([]byte(nil), addr...)
	}
	ss.inMail = true
	ss.w.Write(reply250MailOk)
}

func (ss *session) rcpt(arg []byte) {
	if !ss.inMail {
		ss.w.Write(reply503NeedMail)
		return
	}
	if !hasPrefixFold(arg, "TO:") {
		ss.w.Write(reply501Rcpt)
		return
	}
	addr, _, ok := path(arg[3:])
	if !ok || len(addr) == 0 {
		ss.w.Write(reply501Rcpt)
		return
	}
	switch {
	case hasPrefixFold(addr, "REJECT@"):
		ss.w.Write(reply550Reject)
		return
	case hasPrefixFold(addr, "TEMPFAIL@"):
		ss.w.Write(reply450Tempfail)
		return
	}
	ss.nrcpt++
	if ss.keep {
		ss.to = append(ss.to, append([]byte(nil), addr...))
	}
	ss.w.Write(reply250RcptOk)
}

// data reads the message after 354 up to the line ".\r\n"; false ends the
// session (the connection broke).
func (ss *session) data() bool {
	if !ss.inMail {
		ss.w.Write(reply503NeedMail)
		return true
	}
	if ss.nrcpt == 0 {
		ss.w.Write(reply503NeedRcpt)
		return true
	}
	ss.w.Write(reply354)
	if ss.r.Buffered() == 0 {
		if ss.w.Flush() != nil {
			return false
		}
	}
	ss.c.SetReadDeadline(time.Now().Add(dataTimeout))
	var body *bytes.Buffer
	if ss.keep {
		body = new(bytes.Buffer)
	}
	var size int64
	atStart := true // at the start of a line
	for {
		line, err := ss.r.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull {
			return false
		}
		if atStart && len(line) > 0 && line[0] == '.' {
			if err == nil && len(line) == 3 && line[1] == '\r' {
				break // ".\r\n": end of data
			}
			line = line[1:] // dot-stuffing
		}
		atStart = err == nil // a full buffer is a partial line
		size += int64(len(line))
		if body != nil {
			body.Write(line)
		}
	}
	max := ss.s.maxSize.Load()
	if max > 0 && size > max {
		ss.reset()
		ss.w.Write(reply552Size)
		return true
	}
	s := ss.s
	s.bytes.Add(size)
	s.rcpts.Add(int64(ss.nrcpt))
	s.msgs.Add(1)
	if ss.keep {
		m := Message{From: string(ss.from), Body: body.Bytes()}
		for _, t := range ss.to {
			m.To = append(m.To, string(t))
		}
		s.mu.Lock()
		if s.keep > 0 { // KeepBodies(0) may have come meanwhile
			if len(s.kept) < s.keep {
				s.kept = append(s.kept, m)
			} else {
				s.kept[s.next] = m
				s.next = (s.next + 1) % s.keep
			}
		}
		s.mu.Unlock()
		if f := s.deliver.Load(); f != nil {
			(*f)(m)
		}
	}
	// Wake WaitMessages; the lock is only taken when someone waits. A waiter
	// registers before it reads the counter, so it cannot miss this message.
	if s.waiters.Load() > 0 {
		s.mu.Lock()
		close(s.msgCh)
		s.msgCh = make(chan struct{})
		s.mu.Unlock()
	}
	ss.reset()
	ss.w.Write(reply250Queued)
	return true
}

// String describes the counters, for logs.
func (st Stats) String() string {
	return fmt.Sprintf("connections=%d messages=%d recipients=%d bytes=%d", st.Connections, st.Messages, st.Recipients, st.Bytes)
}

var _ io.Closer = (*Sink)(nil)
