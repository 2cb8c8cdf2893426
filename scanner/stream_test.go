package scanner

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

// growing is a spool file that grows while a stream follows it, written as
// a session worker writes it: the header line, then the message in pieces.
type growing struct {
	path string
	w    *os.File
}

func newGrowing(t *testing.T) *growing {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool")
	w, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	if _, err := w.WriteString(spoolHeader); err != nil {
		t.Fatal(err)
	}
	return &growing{path: path, w: w}
}

func (g *growing) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := g.w.Write(b); err != nil {
		t.Fatal(err)
	}
}

// open returns a new read-only descriptor of the file. The caller owns it.
func (g *growing) open(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Open(g.path)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// bigMessage is a message of about size bytes of text with EICAR at where:
// "start" (the first line of the body), "middle", "end" (the last line),
// or "" for none.
func bigMessage(size int, where string) []byte {
	var b bytes.Buffer
	b.WriteString("From: <a@example.com>\r\nTo: <b@example.org>\r\nSubject: big\r\n\r\n")
	if where == "start" {
		b.Write(harness.EICAR())
		b.WriteString("\r\n")
	}
	line := strings.Repeat("streaming text for clamd ", 3) + "\r\n"
	for i := 0; b.Len() < size; i++ {
		if where == "middle" && b.Len() >= size/2 {
			b.Write(harness.EICAR())
			b.WriteString("\r\n")
			where = ""
		}
		b.WriteString(line)
	}
	if where == "end" {
		b.Write(harness.EICAR())
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

var testLink = &ipc.Peer{Name: "session 0"}

// streamedScan does what a session worker and the dispatch do for one
// streamed message: MsgScanStart, the message written in pieces with a
// pause after each, then MsgScanFinish's scan. It returns the verdict and
// how long the scan after the dot took.
func streamedScan(t *testing.T, e *engine, tbl *streams, msg []byte, piece int, pause time.Duration) (*ipc.Verdict, time.Duration) {
	t.Helper()
	g := newGrowing(t)
	tbl.start(testLink, e, &ipc.ScanStart{SessionID: 7, Transaction: 1, Client: testClient}, g.open(t))
	for len(msg) > 0 {
		n := min(piece, len(msg))
		g.write(t, msg[:n])
		msg = msg[n:]
		time.Sleep(pause)
	}
	return finishScan(t, e, tbl, g, 7, 1)
}

// finishScan is the scan of MsgScanFinish for session's trns.
func finishScan(t *testing.T, e *engine, tbl *streams, g *growing, session uint64, trns int) (*ipc.Verdict, time.Duration) {
	t.Helper()
	f := g.open(t)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	st := tbl.take(testLink, session, trns)
	ee := *e
	if st != nil {
		defer st.cancel()
		ee.stream = st.antivirus(e.cfg)
	}
	v := ee.scan(context.Background(), &ipc.Scan{SessionID: session, Transaction: trns,
		Size: fi.Size() - int64(len(spoolHeader)), Client: testClient}, f)
	return v, time.Since(t0)
}

var streamedRE = regexp.MustCompile(`stream session=7 trns=1: (\d+) bytes streamed before the dot, (\d+) after`)

// streamedBytes returns what the last stream of session 7 logged it sent
// before the dot; -1 when no stream finished.
func streamedBytes(lb *logBuf) int64 {
	m := streamedRE.FindAllStringSubmatch(lb.String(), -1)
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[len(m)-1][1], 10, 64)
	return n
}

// Real clamd, both transports (INSTREAM works over the unix socket too):
// EICAR at the start, in the middle and at the very end of a large
// message is found; a clean message is clean; and most of the message
// went to clamd before the dot.
func TestStreamVerdicts(t *testing.T) {
	c := harness.Clamd(t)
	for _, tr := range []struct{ name, addr string }{{"unix", c.Socket}, {"tcp", c.Addr}} {
		t.Run(tr.name, func(t *testing.T) {
			e, lb := testEngine(t, clamdConfig(tr.addr))
			var tbl streams
			for _, where := range []string{"", "start", "middle", "end"} {
				msg := bigMessage(2<<20, where)
				v, _ := streamedScan(t, e, &tbl, msg, 64<<10, time.Millisecond)
				want := ipc.VerdictVirus
				if where == "" {
					want = ipc.VerdictClean
				}
				if v.Kind != want || v.Err != "" || (want == ipc.VerdictVirus) != (v.Name != "") || !slices.Equal(v.Scanned, []string{"clamd"}) {
					t.Errorf("EICAR at %q: verdict %+v, want %s", where, v, want)
				}
				if n := streamedBytes(lb); n < int64(len(msg))/2 {
					t.Errorf("EICAR at %q: %d bytes streamed before the dot, want most of %d\n%s", where, n, len(msg), lb)
				}
			}
			if len(tbl.m) != 0 {
				t.Errorf("streams left in the table: %v", tbl.m)
			}
		})
	}
}

// A message below streamMin never connects: it is scanned at the dot, with
// the same verdicts.
func TestStreamSmall(t *testing.T) {
	c := harness.Clamd(t)
	e, lb := testEngine(t, clamdConfig(c.Socket))
	var tbl streams
	virus := append(message("small"), harness.EICAR()...)
	if v, _ := streamedScan(t, e, &tbl, virus, 1024, 0); v.Kind != ipc.VerdictVirus {
		t.Errorf("small virus: verdict %+v", v)
	}
	if v, _ := streamedScan(t, e, &tbl, message("small"), 1024, 0); v.Kind != ipc.VerdictClean || v.Err != "" {
		t.Errorf("small clean: verdict %+v", v)
	}
	if n := streamedBytes(lb); n != -1 {
		t.Errorf("a small message was streamed (%d bytes):\n%s", n, lb)
	}
}

// waitFDs waits until this process has want descriptors open.
func waitFDs(t *testing.T, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) != want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := openFDs(t); n != want {
		t.Fatalf("%s: %d descriptors open, want %d", what, n, want)
	}
}

// A stream the session gives up (MsgScanAbort), and the streams of a
// link that ended, let go of the spool file and of clamd at once.
func TestStreamAbandoned(t *testing.T) {
	c := harness.Clamd(t)
	for _, how := range []string{"abort", "link"} {
		t.Run(how, func(t *testing.T) {
			e, _ := testEngine(t, clamdConfig(c.Socket))
			var tbl streams
			g := newGrowing(t)
			base := openFDs(t)
			tbl.start(testLink, e, &ipc.ScanStart{SessionID: 9, Transaction: 2}, g.open(t))
			g.write(t, bigMessage(1<<20, ""))
			waitFDs(t, base+2, "streaming") // the spool file and clamd
			if how == "abort" {
				tbl.abort(testLink, 9, 2)
			} else {
				tbl.dropLink(testLink)
			}
			waitFDs(t, base, "after the "+how)
			if len(tbl.m) != 0 {
				t.Errorf("streams left in the table: %v", tbl.m)
			}
			tbl.abort(testLink, 9, 2) // unknown now: nothing happens
		})
	}
}

// clamd stopped in the middle of a stream: the scan at the dot falls back
// to the whole file, which fails too; an error, and quickly.
func TestStreamClamdDies(t *testing.T) {
	c := harness.NewClamd(t)
	for _, addr := range []string{c.Socket, c.Addr} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cfg := clamdConfig(addr)
		cfg.TimeoutScanner = 5
		e, lb := testEngine(t, cfg)
		var tbl streams
		g := newGrowing(t)
		base := openFDs(t)
		tbl.start(testLink, e, &ipc.ScanStart{SessionID: 7, Transaction: 1}, g.open(t))
		msg := bigMessage(3<<20, "end")
		g.write(t, msg[:1<<20])
		waitFDs(t, base+2, "streaming")
		if err := c.Stop(); err != nil {
			t.Fatal(err)
		}
		g.write(t, msg[1<<20:])
		v, d := finishScan(t, e, &tbl, g, 7, 1)
		if v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "clamd") {
			t.Errorf("%s: verdict %+v, want a clamd error\n%s", addr, v, lb)
		}
		if d > 3*time.Second {
			t.Errorf("%s: the verdict took %v", addr, d)
		}
		waitFDs(t, base, "after the scan")
	}
}

// readCommand reads a clamd command up to its NUL, closing any descriptor
// that rides along.
func readCommand(c net.Conn) string {
	var got []byte
	buf := make([]byte, 1)
	oob := make([]byte, 64)
	for !bytes.HasSuffix(got, []byte{0}) && len(got) < 32 {
		var n int
		var err error
		if uc, ok := c.(*net.UnixConn); ok {
			var oobn int
			n, oobn, _, _, err = uc.ReadMsgUnix(buf, oob)
			closeRights(oob[:oobn])
		} else {
			n, err = c.Read(buf)
		}
		if err != nil {
			break
		}
		got = append(got, buf[:n]...)
	}
	return string(got)
}

// clamd answers a stream over its StreamMaxLength while it is still being
// sent and closes, or after its end: the scan at the dot falls back to
// FILDES, which is not bound by StreamMaxLength.
func TestStreamFallback(t *testing.T) {
	for _, when := range []string{"while sent", "at the end"} {
		t.Run(when, func(t *testing.T) {
			path := fakeServer(t, func(c net.Conn) {
				switch readCommand(c) {
				case "zINSTREAM\x00":
					if when == "while sent" {
						io.CopyN(io.Discard, c, 200<<10)
					} else {
						readChunks(c)
					}
					c.Write([]byte("INSTREAM size limit exceeded. ERROR\x00"))
				case "zFILDES\x00":
					readCommand(c) // the byte with the descriptor
					c.Write([]byte("fd[5]: OK\x00"))
				}
			})
			e, lb := testEngine(t, clamdConfig(path))
			var tbl streams
			v, _ := streamedScan(t, e, &tbl, bigMessage(1<<20, ""), 64<<10, time.Millisecond)
			if v.Kind != ipc.VerdictClean || v.Err != "" {
				t.Errorf("verdict %+v, want clean from the FILDES fallback\n%s", v, lb)
			}
			if !strings.Contains(lb.String(), "size limit exceeded") || !strings.Contains(lb.String(), "scanning the whole file") {
				t.Errorf("the fallback is not logged:\n%s", lb)
			}
		})
	}
}

// readChunks reads INSTREAM chunks up to the zero-length one.
func readChunks(c net.Conn) {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			return
		}
	}
}

// A clamd that takes the whole stream and never answers: an error
// timeout_scanner after the dot, not later.
func TestStreamNoAnswer(t *testing.T) {
	path := fakeServerTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	cfg := clamdConfig(path)
	cfg.TimeoutScanner = 1
	e, _ := testEngine(t, cfg)
	var tbl streams
	v, d := streamedScan(t, e, &tbl, bigMessage(1<<20, ""), 64<<10, 0)
	if v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "no answer within 1s") {
		t.Errorf("verdict %+v, want no answer within 1s", v)
	}
	if d < 900*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("the verdict took %v, want about 1s", d)
	}
}

// scan_max_size: the stream stops once the message is over it, and the
// message is not virus-scanned, as without streaming.
func TestStreamScanMaxSize(t *testing.T) {
	c := harness.Clamd(t)
	cfg := clamdConfig(c.Socket)
	cfg.ScanMaxSize = 300 << 10
	e, lb := testEngine(t, cfg)
	var tbl streams
	v, _ := streamedScan(t, e, &tbl, bigMessage(1<<20, "start"), 64<<10, time.Millisecond)
	if v.Kind != ipc.VerdictClean || len(v.Scanned) != 0 {
		t.Errorf("verdict %+v, want clean and nothing scanned", v)
	}
	if line := lb.lastScanLine(); !strings.Contains(line, "skipped=clamd(scan_max_size)") {
		t.Errorf("log line %q does not say why clamd was skipped", line)
	}
}

// A stream whose file stops growing for timeout_idle + timeout_scanner is
// dropped on its own (a session that lost track of it); a late finish
// scans the whole file.
func TestStreamIdle(t *testing.T) {
	c := harness.Clamd(t)
	cfg := clamdConfig(c.Socket)
	cfg.TimeoutIdle, cfg.TimeoutScanner = 1, 1
	e, lb := testEngine(t, cfg)
	var tbl streams
	g := newGrowing(t)
	base := openFDs(t)
	tbl.start(testLink, e, &ipc.ScanStart{SessionID: 7, Transaction: 1}, g.open(t))
	g.write(t, bigMessage(1<<20, "end"))
	waitFDs(t, base+2, "streaming")
	time.Sleep(2500 * time.Millisecond)
	waitFDs(t, base, "after 2 s without growth")
	if !strings.Contains(lb.String(), "did not grow for 2s: dropped") {
		t.Errorf("no log line about the dropped stream:\n%s", lb)
	}
	if v, _ := finishScan(t, e, &tbl, g, 7, 1); v.Kind != ipc.VerdictVirus {
		t.Errorf("verdict %+v, want virus", v)
	}
}

// Through the dispatch, as a session worker sends it: MsgScanStart,
// MsgScanFinish, and MsgScanAbort for a second message; every descriptor
// is closed afterwards.
func TestStreamDispatch(t *testing.T) {
	c := harness.Clamd(t)
	s, session := dispatchPair(t, clamdConfig(c.Socket))
	base := openFDs(t)
	for i, msg := range [][]byte{bigMessage(1<<20, "middle"), bigMessage(1<<20, "")} {
		g := newGrowing(t)
		r := g.open(t)
		if err := session.Send(ipc.MsgScanStart, &ipc.ScanStart{SessionID: 5, Transaction: i + 1}, fdOf(t, r)); err != nil {
			t.Fatal(err)
		}
		r.Close()
		g.write(t, msg)
		if i == 1 {
			if err := session.Send(ipc.MsgScanAbort, &ipc.ScanAbort{SessionID: 5, Transaction: i + 1}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		r = g.open(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		m, err := session.Call(ctx, ipc.MsgScanFinish, &ipc.Scan{SessionID: 5, Transaction: i + 1, Size: int64(len(msg)), Client: testClient}, ipc.MsgVerdict, fdOf(t, r))
		cancel()
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if v := m.Payload.(*ipc.Verdict); v.Kind != ipc.VerdictVirus {
			t.Errorf("verdict %+v, want virus", v)
		}
	}
	waitFDs(t, base+2, "after the scans") // the two growing files' writers
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	if len(s.streams.m) != 0 {
		t.Errorf("streams left: %v", s.streams.m)
	}
}

// dispatchPair is a scanner process's dispatch for cfg on one end of a
// link, and the session worker's end.
func dispatchPair(t *testing.T, cfg *config.Config) (*server, *ipc.Peer) {
	t.Helper()
	s := &server{env: &child.Env{Role: ipc.RoleScanner, Log: logx.To(&logBuf{}, logx.Debug)}}
	s.cfg.Store(cfg)
	ca, cb, err := ipc.ConnPair()
	if err != nil {
		t.Fatal(err)
	}
	scannerSide := ipc.NewPeer(cb, "session 0", s.fromSession)
	go func() {
		scannerSide.Run()
		scannerSide.Close()
		s.streams.dropLink(scannerSide)
	}()
	session := ipc.NewPeer(ca, "scanner", func(p *ipc.Peer, m *ipc.Msg) { m.Close() })
	go session.Run()
	t.Cleanup(func() { session.Close() })
	return s, session
}
