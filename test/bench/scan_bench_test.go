package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/test/harness"
)

// Scanning with clamd (issue 4, "Measured"): how long the client waits at
// the final dot when the message is scanned, against clamd's own scan
// time of the same file measured in the same run; and messages/s with
// scanning on. clamd is the harness's (test/peers/clamd.sh): an offline
// database of three signatures, ScanMail on.

// scanModes are the ways a message reaches clamd.
var scanModes = []struct {
	name   string
	tcp    bool   // antivirus_path ip:port, else the unix socket
	stream string // scan_stream
}{
	{"fildes", false, "no"},         // the descriptor after the dot
	{"unix-stream", false, "yes"},   // INSTREAM over the unix socket while DATA arrives
	{"tcp-instream", true, "no"},    // the whole file over TCP after the dot
	{"tcp-stream", true, "auto"},    // the default over TCP: streamed
	{"unix-default", false, "auto"}, // the default over a unix socket: FILDES
}

// clamdRig is a daemon relaying to a sink and scanning with clamd.
func clamdRig(b *testing.B, c *harness.ClamdServer, tcp bool, stream string) *rig {
	b.Helper()
	dir, err := os.MkdirTemp("", "sgbs-")
	if err != nil {
		b.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	b.Cleanup(func() { os.RemoveAll(dir) })
	// lock_path and ratelimit_path of their own, writable by the
	// children's user: the defaults may not be.
	lock := filepath.Join(dir, "lock")
	os.Mkdir(lock, 0o777)
	os.Chmod(lock, 0o777)
	path := c.Socket
	if tcp {
		path = c.Addr
	}
	return newRig(b, "antivirus_type clamd", "antivirus_path "+path, "scan_stream "+stream,
		"scan_max_size 100000000", "spool_path "+filepath.Join(dir, "spool"), "max_load 0",
		"lock_path "+lock, "ratelimit_path "+lock)
}

// spoolImage is what the spool file of data holds: the spool header line
// and the message, dot-unstuffed, without the final dot.
func spoolImage(b *testing.B, data []byte) string {
	b.Helper()
	f, err := os.CreateTemp("", "sgbs-spool-")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.Cleanup(func() { os.Remove(f.Name()) })
	f.WriteString("X-Proxy-Spool-Info: src=127.0.0.1:40000, ident=, dst=127.0.0.1:25, trns=1\r\n")
	msg := strings.ReplaceAll(string(data[:len(data)-3]), "\r\n..", "\r\n.")
	f.WriteString(msg)
	return f.Name()
}

// clamdFildes is clamd's own time for path: connect, FILDES, the answer.
func clamdFildes(b *testing.B, c *harness.ClamdServer, path string) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	t0 := time.Now()
	conn, err := net.Dial("unix", c.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	uc.Write([]byte("zFILDES\x00"))
	if _, _, err := uc.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil); err != nil {
		b.Fatal(err)
	}
	clamdAnswer(b, conn)
	return time.Since(t0)
}

// clamdInstream is clamd's time for path sent whole with INSTREAM over
// TCP, as a scan after the dot does it.
func clamdInstream(b *testing.B, c *harness.ClamdServer, path string) time.Duration {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	conn, err := net.Dial("tcp", c.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("zINSTREAM\x00"))
	var hdr [4]byte
	for off := 0; off < len(data); off += 64 << 10 {
		end := min(off+64<<10, len(data))
		binary.BigEndian.PutUint32(hdr[:], uint32(end-off))
		conn.Write(hdr[:])
		conn.Write(data[off:end])
	}
	conn.Write([]byte{0, 0, 0, 0})
	clamdAnswer(b, conn)
	return time.Since(t0)
}

func clamdAnswer(b *testing.B, conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	r, err := io.ReadAll(io.LimitReader(conn, 512))
	if err != nil || !strings.HasSuffix(strings.TrimRight(string(r), "\x00\n"), "OK") {
		b.Fatalf("clamd answered %q, %v", r, err)
	}
}

func medianOf(n int, f func() time.Duration) float64 {
	var v []float64
	for range n {
		v = append(v, float64(f().Microseconds())/1000)
	}
	return median(v)
}

// endOfDataPaced is endOfData with a pause between the message and its
// final dot: a client whose link is slower than the proxy, so that
// nothing of the body is still in flight at the dot.
func endOfDataPaced(b *testing.B, addr string, data []byte, n int, pause time.Duration) float64 {
	cl, err := dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.c.Close()
	if err := cl.cmd("EHLO bench.test", 250); err != nil {
		b.Fatal(err)
	}
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
		time.Sleep(pause)
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

// BenchmarkEndOfDataClamd: the time from the final dot to the reply with
// clamd scanning, for each scanMode, against clamd's own time for the same
// file (FILDES from here; INSTREAM of the whole file over TCP as well).
// "burst": the client sends the dot right after the body, as
// BenchmarkEndOfData does (a fast client: part of the body is still in
// the socket buffers at the dot). "paced": 100 ms between the body and
// the dot (a client slower than the proxy: all of the body has arrived).
// Ratios are to clamd's FILDES time.
func BenchmarkEndOfDataClamd(b *testing.B) {
	c := harness.Clamd(b)
	rigs := map[string]*rig{}
	for _, m := range scanModes {
		rigs[m.name] = clamdRig(b, c, m.tcp, m.stream)
	}
	direct := rigs["fildes"].sink.Addr()
	for range b.N {
		for _, size := range []int{10 << 10, 1 << 20, 10 << 20} {
			data := payload(size)
			name := fmt.Sprintf("%dKiB", size>>10)
			img := spoolImage(b, data)
			n := 20
			if size >= 10<<20 {
				n = 10
			}
			clamdFildes(b, c, img) // warm-up
			own := medianOf(n, func() time.Duration { return clamdFildes(b, c, img) })
			ownStream := medianOf(n, func() time.Duration { return clamdInstream(b, c, img) })
			b.ReportMetric(own, "clamd-fildes-ms-"+name)
			b.ReportMetric(ownStream, "clamd-instream-ms-"+name)
			for _, pace := range []struct {
				name  string
				pause time.Duration
			}{{"burst", 0}, {"paced", 100 * time.Millisecond}} {
				lat := func(addr string, n int) float64 {
					if pace.pause == 0 {
						return endOfData(b, addr, data, n)
					}
					return endOfDataPaced(b, addr, data, n, pace.pause)
				}
				lat(direct, 2)
				d := lat(direct, n)
				b.ReportMetric(d, fmt.Sprintf("direct-%s-ms-%s", pace.name, name))
				line := fmt.Sprintf("%s %-5s clamd fildes %7.2f ms, instream %7.2f ms; direct %7.2f ms", name, pace.name, own, ownStream, d)
				for _, m := range scanModes {
					addr := rigs[m.name].proxy
					lat(addr, 2)
					p := lat(addr, n)
					b.ReportMetric(p, fmt.Sprintf("%s-%s-ms-%s", m.name, pace.name, name))
					b.ReportMetric(p/own, fmt.Sprintf("%s-%s-ratio-%s", m.name, pace.name, name))
					line += fmt.Sprintf("; %s %7.2f ms (%.2fx)", m.name, p, p/own)
				}
				b.Log(line)
			}
			os.Remove(img)
		}
	}
}

// BenchmarkThroughputClamd: messages/s at 20 concurrent sessions with
// scanning on (each mode of scanModes), against the sink directly, for
// messages of 100 KiB (below the size at which a message is streamed) and
// 1 MiB. Medians of three runs after a warm-up.
func BenchmarkThroughputClamd(b *testing.B) {
	c := harness.Clamd(b)
	rigs := map[string]*rig{}
	for _, m := range scanModes {
		rigs[m.name] = clamdRig(b, c, m.tcp, m.stream)
	}
	direct := rigs["fildes"].sink.Addr()
	for range b.N {
		for _, size := range []int{100 << 10, 1 << 20} {
			data := payload(size)
			name := fmt.Sprintf("%dKiB", size>>10)
			per := 20
			if size >= 1<<20 {
				per = 5
			}
			rate := func(addr string) float64 {
				throughput(b, addr, 20, 2, data) // warm-up
				var v []float64
				for range 3 {
					msgs, _ := throughput(b, addr, 20, per, data)
					v = append(v, msgs)
				}
				return median(v)
			}
			d := rate(direct)
			b.ReportMetric(d, "direct-msgs/s-"+name)
			line := fmt.Sprintf("%s direct %.0f msgs/s", name, d)
			for _, m := range scanModes {
				p := rate(rigs[m.name].proxy)
				b.ReportMetric(p, m.name+"-msgs/s-"+name)
				b.ReportMetric(p/d, m.name+"-ratio-"+name)
				line += fmt.Sprintf("; %s %.0f (%.2fx)", m.name, p, p/d)
			}
			b.Log(line)
		}
	}
}
