// Package bench measures smtp-gated against a direct connection to the
// same MTA, in the same run: `make bench`. The MTA is a fast sink
// (test/sinkmta) so that the proxy, not the MTA, is what is measured.
// Figures are reported as benchmark metrics; nothing here is a timed test.
package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/test/harness"
	"smtp-gated/test/sinkmta"
)

func TestMain(m *testing.M) { harness.Main(m) }

// rig is a sink MTA and a daemon relaying to it.
type rig struct {
	sink   *sinkmta.Sink
	daemon *harness.Daemon
	proxy  string
}

func newRig(b *testing.B, extra ...string) *rig {
	b.Helper()
	sink, err := sinkmta.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sink.Close() })
	_, sport, _ := net.SplitHostPort(sink.Addr())
	dir := harness.DaemonDir(b, "sgb-") // the children run unprivileged
	port := harness.FreePort(b)
	cfg := harness.FixedConfig(sport, port, dir) + `max_connections 5000
max_per_host 5000
log_level info
` + strings.Join(extra, "\n") + "\n"
	d := harness.StartDaemon(b, cfg)
	return &rig{sink: sink, daemon: d, proxy: fmt.Sprintf("127.0.0.1:%d", port)}
}

// client is a minimal, fast SMTP client for load.
type client struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dial(addr string) (*client, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(120 * time.Second))
	cl := &client{c: c, r: bufio.NewReaderSize(c, 4096), w: bufio.NewWriterSize(c, 64*1024)}
	if err := cl.expect(220); err != nil {
		c.Close()
		return nil, err
	}
	return cl, nil
}

// dialEHLO dials addr and says EHLO.
func dialEHLO(addr string) (*client, error) {
	cl, err := dial(addr)
	if err != nil {
		return nil, err
	}
	if err := cl.cmd("EHLO bench.test", 250); err != nil {
		cl.c.Close()
		return nil, err
	}
	return cl, nil
}

// session runs one session on addr: EHLO, n transactions made by send,
// QUIT.
func session(addr string, n int, send func(*client) error) error {
	cl, err := dialEHLO(addr)
	if err != nil {
		return err
	}
	defer cl.c.Close()
	for range n {
		if err := send(cl); err != nil {
			return err
		}
	}
	return cl.cmd("QUIT", 221)
}

// expect reads one (possibly multi-line) reply.
func (cl *client) expect(code int) error {
	for {
		line, err := cl.r.ReadString('\n')
		if err != nil {
			return err
		}
		if len(line) < 4 || line[:3] != strconv.Itoa(code) {
			return fmt.Errorf("got %q, want %d", strings.TrimSpace(line), code)
		}
		if line[3] == ' ' {
			return nil
		}
	}
}

func (cl *client) cmd(line string, code int) error {
	cl.w.WriteString(line + "\r\n")
	if err := cl.w.Flush(); err != nil {
		return err
	}
	return cl.expect(code)
}

// mail sends one pipelined transaction; data is already dot-stuffed and
// ends with ".\r\n".
func (cl *client) mail(data []byte) error {
	cl.w.WriteString("MAIL FROM:<bench@example.com>\r\nRCPT TO:<sink@example.org>\r\nDATA\r\n")
	if err := cl.w.Flush(); err != nil {
		return err
	}
	for _, c := range []int{250, 250, 354} {
		if err := cl.expect(c); err != nil {
			return err
		}
	}
	cl.w.Write(data)
	if err := cl.w.Flush(); err != nil {
		return err
	}
	return cl.expect(250)
}

// payload is a dot-stuffed message of about size bytes.
func payload(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <bench@example.com>\r\nTo: <sink@example.org>\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("0123456789abcdefghij", 3) + "..\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// run starts workers goroutines running job and returns the wall time.
func run(b *testing.B, workers int, job func(w int) error) time.Duration {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := job(w); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return d
}

// throughput: 20 concurrent sessions, each sending messages of 100 KiB.
func throughput(b *testing.B, addr string, sessions, perSession int, data []byte) (msgsPerSec, mbPerSec float64) {
	d := run(b, sessions, func(int) error {
		return session(addr, perSession, func(cl *client) error { return cl.mail(data) })
	})
	n := float64(sessions * perSession)
	return n / d.Seconds(), n * float64(len(data)) / d.Seconds() / 1e6
}

func BenchmarkThroughput100KiB(b *testing.B) {
	r := newRig(b)
	data := payload(100 * 1024)
	for range b.N {
		d, p := compare(b, r, func(addr string) float64 {
			_, mb := throughput(b, addr, 20, 100, data)
			return mb
		})
		b.ReportMetric(d, "direct-MB/s")
		b.ReportMetric(p, "proxy-MB/s")
		b.ReportMetric(d/float64(len(data))*1e6, "direct-msgs/s")
		b.ReportMetric(p/float64(len(data))*1e6, "proxy-msgs/s")
		b.ReportMetric(p/d, "ratio-MB/s")
	}
}

// compare measures f against the sink directly and through the proxy:
// one warm-up run each, then three alternating runs; it returns the
// medians.
func compare(b *testing.B, r *rig, f func(addr string) float64) (direct, proxy float64) {
	f(r.sink.Addr())
	f(r.proxy)
	var ds, ps []float64
	for range 3 {
		ds = append(ds, f(r.sink.Addr()))
		ps = append(ps, f(r.proxy))
	}
	b.Logf("direct %.1f, proxy %.1f", ds, ps)
	return median(ds), median(ps)
}

func median(v []float64) float64 {
	s := append([]float64{}, v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// sessions: concurrent clients each opening short sessions with one 4 KiB
// message.
func sessions(b *testing.B, addr string, workers, perWorker int, data []byte) float64 {
	d := run(b, workers, func(int) error {
		for range perWorker {
			cl, err := dial(addr)
			if err != nil {
				return err
			}
			err = cl.cmd("EHLO bench.test", 250)
			if err == nil {
				err = cl.mail(data)
			}
			if err == nil {
				err = cl.cmd("QUIT", 221)
			}
			cl.c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	return float64(workers*perWorker) / d.Seconds()
}

func BenchmarkSessions4KiB(b *testing.B) {
	r := newRig(b)
	data := payload(4 * 1024)
	for range b.N {
		ds, ps := compare(b, r, func(addr string) float64 { return sessions(b, addr, 200, 10, data) })
		b.ReportMetric(ds, "direct-sessions/s")
		b.ReportMetric(ps, "proxy-sessions/s")
		b.ReportMetric(ps/ds, "ratio-sessions/s")
	}
}

// rss sums VmRSS (KiB) of pid and its children.
func rss(b *testing.B, pid int) int {
	total := 0
	for _, p := range append([]int{pid}, harness.ChildPids(pid)...) {
		s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(string(s), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
				total += kb
			}
		}
	}
	return total
}

// BenchmarkIdleSessions: the memory of all the daemon's processes with
// 1,000 sessions open and idle (greeted, after EHLO).
func BenchmarkIdleSessions(b *testing.B) {
	const n = 1000
	r := newRig(b)
	for range b.N {
		before := rss(b, r.daemon.Pid())
		var open []*client
		for range n {
			cl, err := dial(r.proxy)
			if err == nil {
				err = cl.cmd("EHLO bench.test", 250)
			}
			if err != nil {
				b.Fatal(err)
			}
			open = append(open, cl)
		}
		after := rss(b, r.daemon.Pid())
		b.ReportMetric(float64(before), "rss-KiB-before")
		b.ReportMetric(float64(after), "rss-KiB-1000-idle")
		b.ReportMetric(float64(after-before)/n, "KiB/idle-session")
		for _, cl := range open {
			cl.c.Close()
		}
	}
}

// mailTo sends one pipelined transaction to n recipients.
func (cl *client) mailTo(n int, data []byte) error {
	cl.w.WriteString("MAIL FROM:<bench@example.com>\r\n")
	for i := range n {
		fmt.Fprintf(cl.w, "RCPT TO:<r%d@example.org>\r\n", i)
	}
	cl.w.WriteString("DATA\r\n")
	if err := cl.w.Flush(); err != nil {
		return err
	}
	if err := cl.expect(250); err != nil {
		return err
	}
	for range n {
		if err := cl.expect(250); err != nil {
			return err
		}
	}
	if err := cl.expect(354); err != nil {
		return err
	}
	cl.w.Write(data)
	if err := cl.w.Flush(); err != nil {
		return err
	}
	return cl.expect(250)
}

// BenchmarkPipelined50Rcpts: 20 sessions sending pipelined messages to 50
// recipients each.
func BenchmarkPipelined50Rcpts(b *testing.B) {
	r := newRig(b)
	data := payload(4 * 1024)
	for range b.N {
		d, p := compare(b, r, func(addr string) float64 {
			const sessions, each = 20, 50
			t := run(b, sessions, func(int) error {
				return session(addr, each, func(cl *client) error { return cl.mailTo(50, data) })
			})
			return sessions * each / t.Seconds()
		})
		b.ReportMetric(d, "direct-msgs/s")
		b.ReportMetric(p, "proxy-msgs/s")
		b.ReportMetric(p/d, "ratio-msgs/s")
	}
}

// BenchmarkLarge10MiB: 4 sessions each sending 10 MiB messages.
func BenchmarkLarge10MiB(b *testing.B) {
	r := newRig(b, "scan_max_size 100000000")
	data := payload(10 << 20)
	for range b.N {
		d, p := compare(b, r, func(addr string) float64 {
			_, mb := throughput(b, addr, 4, 5, data)
			return mb
		})
		b.ReportMetric(d, "direct-MB/s")
		b.ReportMetric(p, "proxy-MB/s")
		b.ReportMetric(p/d, "ratio-MB/s")
	}
}

// endOfData measures, on one session, the time from the final dot to the
// reply, over n messages, and returns the median in milliseconds.
func endOfData(b *testing.B, addr string, data []byte, n int) float64 {
	return endOfDataPaced(b, addr, data, n, 0)
}

// endOfDataPaced is endOfData with a pause between the message and its
// final dot: a client whose link is slower than the proxy, so that
// nothing of the body is still in flight at the dot.
func endOfDataPaced(b *testing.B, addr string, data []byte, n int, pause time.Duration) float64 {
	cl, err := dialEHLO(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.c.Close()
	body, dot := data[:len(data)-3], data[len(data)-3:]
	var lat []float64
	for range n {
		cl.w.WriteString("MAIL FROM:<bench@example.com>\r\nRCPT TO:<sink@example.org>\r\nDATA\r\n")
		cl.w.Flush()
		for _, c := range []int{250, 250, 354} {
			if err := cl.expect(c); err != nil {
				b.Fatal(err)
			}
		}
		cl.w.Write(body)
		cl.w.Flush()
		if pause > 0 {
			time.Sleep(pause)
		}
		start := time.Now()
		cl.w.Write(dot)
		cl.w.Flush()
		if err := cl.expect(250); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	return median(lat)
}

// BenchmarkEndOfData: how long the client waits after its final dot,
// direct and through the proxy (no scanner configured: the hold of the
// dot alone).
func BenchmarkEndOfData(b *testing.B) {
	r := newRig(b, "scan_max_size 100000000")
	for _, size := range []int{10 << 10, 1 << 20, 10 << 20} {
		data := payload(size)
		endOfData(b, r.sink.Addr(), data, 3)
		endOfData(b, r.proxy, data, 3)
		d := endOfData(b, r.sink.Addr(), data, 20)
		p := endOfData(b, r.proxy, data, 20)
		name := fmt.Sprintf("%dKiB", size>>10)
		b.ReportMetric(d, "direct-ms-"+name)
		b.ReportMetric(p, "proxy-ms-"+name)
	}
}
