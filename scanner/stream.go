package scanner

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// Streaming (scan_stream): a message goes to clamd while it arrives.
//
// At the MTA's 354 the session worker sends MsgScanStart with a read-only
// descriptor of the spool file it is writing. A goroutine here follows the
// file as it grows and feeds clamd an INSTREAM from it (pread at its own
// offset; the session's and clamd's offsets do not matter). At the final
// dot the session sends MsgScanFinish, a MsgScan with the descriptor: the
// virus scan then sends what is left, the terminating chunk, and reads
// clamd's answer. clamd scans nothing before the end of a stream (it writes
// the chunks into a temporary file), so what streaming saves is the
// transfer of the message after the dot, not clamd's scan.
//
// How far the file is written: the goroutine reads until end of file, then
// sleeps, from streamPollMin doubling to streamPollMax, and reads again;
// MsgScanFinish wakes it at once. The session's DATA loop sends nothing
// while the message arrives (no message per N KiB on the link all its
// sessions share), a stream that keeps up costs one pread returning 0 per
// wake-up, and a slow client costs at most one every streamPollMax. A read
// never sees a part of a write: a regular file's size moves only after the
// bytes below it are in place.
//
// Nothing is lost by a stream that cannot go on: it gives up (clamd gone,
// clamd's ReadTimeout or StreamMaxLength, scan_max_size passed, no growth
// for timeout_idle) and the scan at the dot is then the ordinary one on the
// descriptor MsgScanFinish carries: FILDES or INSTREAM of the whole file,
// with a fresh timeout_scanner. Once the dot came, a failure is the
// verdict: the session waits no longer than for an ordinary scan.
//
// A stream holds one descriptor of the spool file and one connection to
// clamd. Both are released when the stream ends: MsgScanFinish's scan is
// over, MsgScanAbort (the session gave the message up), the session link
// ended, or the file stopped growing for timeout_idle + timeout_scanner.

const (
	// streamMin is how much of the file must be written before the stream
	// connects to clamd: a smaller message is scanned at the dot, where
	// FILDES (or one INSTREAM) is faster than finishing a stream (clamd
	// answers the end of a stream a few tenths of a millisecond later
	// than a descriptor; measured with test/bench).
	streamMin = 128 << 10
	// streamPollMin and streamPollMax bound the sleep between two reads
	// that found no new data.
	streamPollMin = 2 * time.Millisecond
	streamPollMax = 100 * time.Millisecond
	// streamEarlyReply bounds the wait for an answer clamd sent on its
	// own, after a write failed (StreamMaxLength exceeded, say).
	streamEarlyReply = time.Second
)

// streamKey names a stream: the link it came on, and the session's
// message.
type streamKey struct {
	link    *ipc.Peer
	session uint64
	trns    int
}

// streams is the process's table of running streams.
type streams struct {
	mu sync.Mutex
	m  map[streamKey]*stream
}

// stream is one message being fed to clamd.
type stream struct {
	key     streamKey
	log     *logx.Logger
	f       *os.File // the spool file; closed by run
	header  string   // spool_header
	addr    string   // antivirus_path
	timeout time.Duration
	maxSize uint64        // scan_max_size (0: none)
	idle    time.Duration // give up when the file does not grow for this long

	ctx    context.Context // cancelled by abort
	cancel context.CancelFunc
	finish chan int64    // the final file size, at the dot (buffered)
	dot    atomic.Int64  // timeout_scanner after the dot, unix ns; 0 before
	done   chan struct{} // closed when run has returned
	mu     sync.Mutex
	conn   net.Conn // to clamd, nil until connected; closed by setConn

	// Set by run, read after done.
	found  bool
	name   string
	err    error // the stream's answer failed, after the dot: the verdict
	broken error // the stream gave up before the dot: scan the file instead
	before int64 // bytes sent before the dot
	after  int64 // bytes sent after it
}

// start registers and starts a stream for m (MsgScanStart) from link p.
// It does not block: the handler of the link calls it.
func (t *streams) start(p *ipc.Peer, e *engine, q *ipc.ScanStart, f *os.File) {
	cfg := e.cfg
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{
		key: streamKey{p, q.SessionID, q.Transaction}, log: e.log, f: f,
		header: cfg.SpoolHeader, addr: cfg.AntivirusPath, timeout: cfg.ScannerTimeout(),
		maxSize: cfg.ScanMaxSize, idle: cfg.IdleTimeout() + cfg.ScannerTimeout(),
		ctx: ctx, cancel: cancel, finish: make(chan int64, 1), done: make(chan struct{}),
	}
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[streamKey]*stream)
	}
	old := t.m[s.key]
	t.m[s.key] = s
	t.mu.Unlock()
	if old != nil {
		// A session has one message in DATA at a time: the old stream is
		// stale (its abort was lost), and nobody will finish it.
		e.log.Warningf("stream session=%d trns=%d started twice from %s: dropping the first", q.SessionID, q.Transaction, p.Name)
		old.cancel()
	}
	if f == nil {
		s.broken = errors.New("no descriptor")
		cancel()
		close(s.done)
		return
	}
	go s.run(t)
}

// take removes the stream of (p, session, trns) from the table and
// returns it, nil when there is none.
func (t *streams) take(p *ipc.Peer, session uint64, trns int) *stream {
	k := streamKey{p, session, trns}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[k]
	delete(t.m, k)
	return s
}

// abort ends the stream of (p, session, trns), if there is one.
func (t *streams) abort(p *ipc.Peer, session uint64, trns int) {
	if s := t.take(p, session, trns); s != nil {
		s.log.Debugf("stream session=%d trns=%d: abandoned by the session", session, trns)
		s.cancel()
	}
}

// dropLink ends every stream of link p (it ended).
func (t *streams) dropLink(p *ipc.Peer) {
	t.mu.Lock()
	var gone []*stream
	for k, s := range t.m {
		if k.link == p {
			gone = append(gone, s)
			delete(t.m, k)
		}
	}
	t.mu.Unlock()
	for _, s := range gone {
		s.cancel()
	}
}

// expire removes s from the table if it is still there.
func (t *streams) expire(s *stream) {
	t.mu.Lock()
	if t.m[s.key] == s {
		delete(t.m, s.key)
	}
	t.mu.Unlock()
}

// run follows the file and feeds clamd until the dot, then finishes the
// stream. It always closes the file and the connection.
func (s *stream) run(t *streams) {
	defer close(s.done)
	defer s.f.Close()
	defer s.cancel()
	defer s.setConn(nil)
	// A cancelled stream may be blocked writing to a clamd that does not
	// read: closing the connection ends the write.
	defer context.AfterFunc(s.ctx, func() { s.setConn(nil) })()

	sp, err := openSpool(s.f, s.header)
	if err != nil {
		s.broken = err
		return
	}
	var conn net.Conn
	var buf []byte     // a chunk: its length, then the data
	var off int64      // bytes of the file sent
	var size int64     // the file's size, seen before connecting
	final := int64(-1) // the file's size once the dot came
	wait := streamPollMin
	grew := time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if final < 0 {
			select {
			case final = <-s.finish:
			default:
			}
		}
		if final >= 0 && conn == nil {
			// The dot came before the file was worth a stream.
			s.broken = errSmall
			return
		}
		if final >= 0 && off >= final {
			break
		}
		var n int
		var rerr error
		if conn == nil {
			// Not connected yet: only the size matters.
			var fi os.FileInfo
			if fi, rerr = s.f.Stat(); rerr == nil && fi.Size() >= streamMin {
				if conn, err = s.connect(); err != nil {
					s.fail(err)
					return
				}
				buf = make([]byte, 4+instreamChunk)
				continue
			}
			if rerr == nil && fi.Size() > size {
				size, grew = fi.Size(), time.Now()
			}
		} else {
			want := int64(instreamChunk)
			if final >= 0 {
				want = min(want, final-off)
			}
			n, rerr = s.f.ReadAt(buf[4:4+want], off)
		}
		if n > 0 {
			if s.maxSize > 0 && uint64(off+int64(n)-sp.body) > s.maxSize {
				s.fail(fmt.Errorf("over scan_max_size %d", s.maxSize))
				return
			}
			binary.BigEndian.PutUint32(buf, uint32(n))
			conn.SetWriteDeadline(s.deadline())
			if _, werr := conn.Write(buf[:4+n]); werr != nil {
				s.writeFailed(conn, werr)
				return
			}
			if final < 0 {
				s.before += int64(n)
			} else {
				s.after += int64(n)
			}
			off += int64(n)
			wait, grew = streamPollMin, time.Now()
			continue
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			s.fail(fmt.Errorf("spool: read: %w", rerr))
			return
		}
		if final >= 0 {
			s.err = fmt.Errorf("spool: the file holds %d bytes, the session sent %d", off, final)
			return
		}
		if time.Since(grew) > s.idle {
			s.broken = fmt.Errorf("the spool file did not grow for %v", s.idle)
			t.expire(s)
			s.log.Warningf("stream session=%d trns=%d: %v: dropped", s.key.session, s.key.trns, s.broken)
			return
		}
		timer.Reset(wait)
		select {
		case final = <-s.finish:
		case <-timer.C:
			wait = min(2*wait, streamPollMax)
		case <-s.ctx.Done():
			s.broken = errAbandoned
			return
		}
	}
	conn.SetDeadline(s.deadline())
	if _, werr := conn.Write([]byte{0, 0, 0, 0}); werr != nil {
		s.writeFailed(conn, werr)
		return
	}
	reply, rerr := readClamdReply(conn)
	if len(reply) == 0 {
		s.err = exchangeError(s.addr, s.timeout, nil, rerr)
		return
	}
	s.found, s.name, s.err = parseClamdReply(reply)
	if s.err != nil && strings.Contains(s.err.Error(), "size limit exceeded") {
		// clamd's StreamMaxLength, found out only now: FILDES is not
		// bound by it (see writeFailed).
		s.broken, s.err = s.err, nil
	}
}

// atDot records that the dot came: from here on the rest of the exchange
// has timeout_scanner, as a scan of the whole file has, and an exchange in
// progress gets that deadline now.
func (s *stream) atDot(size int64) {
	s.dot.Store(time.Now().Add(s.timeout).UnixNano())
	s.mu.Lock()
	if s.conn != nil {
		s.conn.SetDeadline(s.deadline())
	}
	s.mu.Unlock()
	s.finish <- size // buffered: never blocks, read or not
}

// deadline is the deadline of the next operation on the connection:
// timeout_scanner from now, but no later than timeout_scanner after the
// dot.
func (s *stream) deadline() time.Time {
	d := time.Now().Add(s.timeout)
	if dot := s.dot.Load(); dot != 0 && dot < d.UnixNano() {
		return time.Unix(0, dot)
	}
	return d
}

// setConn makes c the stream's connection, closing the one before.
func (s *stream) setConn(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
	s.conn = c
}

var (
	// errSmall: the message ended before it was worth a stream.
	errSmall = errors.New("below the streaming size")
	// errAbandoned: the session gave the message up.
	errAbandoned = errors.New("abandoned")
)

// connect opens the INSTREAM. The connection is the stream's (setConn)
// before anything is written to it.
func (s *stream) connect() (net.Conn, error) {
	conn, err := dialScanner(s.ctx, s.addr, s.timeout)
	if err != nil {
		return nil, err
	}
	s.setConn(conn)
	if s.ctx.Err() != nil {
		return nil, errAbandoned // cancelled before setConn: closed here
	}
	conn.SetWriteDeadline(s.deadline())
	if _, err := conn.Write([]byte("zINSTREAM\x00")); err != nil {
		return nil, fmt.Errorf("%s: send: %w", s.addr, err)
	}
	return conn, nil
}

// fail records why the stream stopped: before the dot a reason to scan
// the whole file instead, after it the verdict.
func (s *stream) fail(err error) {
	switch {
	case s.ctx.Err() != nil:
		s.broken = errAbandoned
	case s.dot.Load() != 0:
		s.err = err
	default:
		s.broken = err
	}
}

// writeFailed handles a write that failed: clamd may have answered on its
// own and closed (over its StreamMaxLength: "INSTREAM size limit
// exceeded"), which is read and kept as the reason. Such a refusal lets the
// scan at the dot fall back to the whole file even when it came after the
// dot (it comes as soon as clamd reads past its limit): FILDES is not
// bound by StreamMaxLength.
func (s *stream) writeFailed(conn net.Conn, werr error) {
	if s.ctx.Err() != nil {
		s.broken = errAbandoned
		return
	}
	d := s.deadline()
	if early := time.Now().Add(streamEarlyReply); early.Before(d) {
		d = early
	}
	conn.SetReadDeadline(d)
	reply, rerr := readClamdReply(conn)
	if len(reply) == 0 {
		s.fail(exchangeError(s.addr, s.timeout, werr, rerr))
		return
	}
	found, name, err := parseClamdReply(reply)
	if found {
		s.found, s.name = true, name
		return
	}
	if err == nil {
		err = fmt.Errorf("%s: answered before the end of the stream: %q", s.addr, clip(string(reply)))
	}
	s.broken = err
}

// streamed is the antivirus of a scan whose message was streamed: it
// finishes the stream, or scans the whole file with fallback when the
// stream gave up before the dot.
type streamed struct {
	s        *stream
	fallback antivirus
}

func (a *streamed) name() string { return a.fallback.name() }

func (a *streamed) scan(ctx context.Context, sp *spool) (bool, string, error) {
	s := a.s
	s.atDot(sp.size)
	select {
	case <-s.done:
	case <-ctx.Done():
		s.cancel()
		<-s.done
		return false, "", ctx.Err()
	}
	k := s.key
	if s.broken != nil {
		if errors.Is(s.broken, errSmall) {
			return a.fallback.scan(ctx, sp)
		}
		s.log.Infof("stream session=%d trns=%d: gave up after %d bytes (%v): scanning the whole file", k.session, k.trns, s.before, s.broken)
		return a.fallback.scan(ctx, sp)
	}
	s.log.Debugf("stream session=%d trns=%d: %d bytes streamed before the dot, %d after", k.session, k.trns, s.before, s.after)
	return s.found, s.name, s.err
}

// streamed returns the antivirus for the scan of the stream's message, or
// nil to scan as if there were no stream (the configuration changed).
func (s *stream) antivirus(cfg *config.Config) antivirus {
	if cfg.AntivirusType != config.AntivirusClamd {
		return nil
	}
	return &streamed{s: s, fallback: &clamd{addr: cfg.AntivirusPath, timeout: cfg.ScannerTimeout()}}
}
