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

// Scanning with clamd: how long the client waits at
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
	{"fildes", false, "auto"},     // the default over a unix socket: the descriptor after the dot
	{"unix-stream", false, "yes"}, // INSTREAM over the unix socket while DATA arrives
	{"tcp-instream", true, "no"},  // the whole file over TCP after the dot
	{"tcp-stream", true, "auto"},  // the default over TCP: INSTREAM while DATA arrives
}

// clamdRig is a daemon relaying to a sink and scanning with clamd.
func clamdRig(b *testing.B, c *harness.ClamdServer, tcp bool, stream string) *rig {
	b.Helper()
	path := c.Socket
	if tcp {
		path = c.Addr
	}
	return scanRig(b, "antivirus_type clamd", "antivirus_path "+path, "scan_stream "+stream)
}

// scanRig is newRig with a spool, lock and rate-limit directory of its own
// (the defaults may not be writable by the children's user), scan_max_size
// above the largest message, and no load limit.
func scanRig(b *testing.B, extra ...string) *rig {
	b.Helper()
	dir := harness.DaemonDir(b, "sgbs-")
	lock := filepath.Join(dir, "lock")
	os.Mkdir(lock, 0o777)
	os.Chmod(lock, 0o777)
	return newRig(b, append([]string{"scan_max_size 100000000", "spool_path " + filepath.Join(dir, "spool"),
		"max_load 0", "lock_path " + lock, "ratelimit_path " + lock}, extra...)...)
}

// spoolImage is what the spool file of data holds: the spool header line
// and the message, dot-unstuffed, without the final dot. seq goes into the
// header, as the session's transaction number does: clamd remembers the
// digests of the files it found clean and answers for the same bytes again
// without scanning, so each scan timed needs a file of its own, as each
// message through the proxy is.
func spoolImage(b *testing.B, data []byte, seq int64) string {
	b.Helper()
	f, err := os.CreateTemp("", "sgbs-spool-")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.Cleanup(func() { os.Remove(f.Name()) })
	fmt.Fprintf(f, "X-Proxy-Spool-Info: src=127.0.0.1:40000, ident=, dst=127.0.0.1:25, trns=%d\r\n", seq)
	msg := strings.ReplaceAll(string(data[:len(data)-3]), "\r\n..", "\r\n.")
	f.WriteString(msg)
	return f.Name()
}

// clamdOwn is one of clamd's own times for data (scan: clamdFildes or
// clamdInstream), on a new spool image.
func clamdOwn(b *testing.B, c *harness.ClamdServer, data []byte, scan func(*testing.B, *harness.ClamdServer, string) time.Duration) float64 {
	img := spoolImage(b, data, time.Now().UnixNano())
	defer os.Remove(img)
	return float64(scan(b, c, img).Microseconds()) / 1000
}

// clamdFildes is clamd's own time for path: connect, FILDES, the answer.
func clamdFildes(b *testing.B, c *harness.ClamdServer, path string) time.Duration {
	d, err := fildesScan(c.Socket, path)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// fildesScan scans path with FILDES on clamd's socket and returns the time
// it took; clamd must answer OK.
func fildesScan(socket, path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	t0 := time.Now()
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	uc := conn.(*net.UnixConn)
	uc.Write([]byte("zFILDES\x00"))
	if _, _, err := uc.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil); err != nil {
		return 0, err
	}
	if err := clamdAnswer(conn); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
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
	if err := clamdAnswer(conn); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// clamdAnswer reads clamd's answer, which must be OK.
func clamdAnswer(conn net.Conn) error {
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	r, err := io.ReadAll(io.LimitReader(conn, 512))
	if err != nil || !strings.HasSuffix(strings.TrimRight(string(r), "\x00\n"), "OK") {
		return fmt.Errorf("clamd answered %q, %v", r, err)
	}
	return nil
}

// BenchmarkEndOfDataClamd: the time from the final dot to the reply with
// clamd scanning, for each scanMode, against clamd's own time for the same
// file (FILDES from here; INSTREAM of the whole file over TCP as well).
// "burst": the client sends the dot right after the body, as
// BenchmarkEndOfData does (a fast client: part of the body is still in
// the socket buffers at the dot). "paced": 100 ms between the body and
// the dot (a client slower than the proxy: all of the body has arrived).
// The machine is shared by the client, the proxy, the sink and clamd, and
// the figures drift: every round measures each way once, in turn, and
// the medians of the rounds are reported. Ratios are to clamd's FILDES
// time.
func BenchmarkEndOfDataClamd(b *testing.B) {
	c := harness.Clamd(b)
	rigs := map[string]*rig{}
	for _, m := range scanModes {
		rigs[m.name] = clamdRig(b, c, m.tcp, m.stream)
	}
	// The proxy holding the dot with no scanner at all: its own share.
	noscan := scanRig(b)
	direct := rigs["fildes"].sink.Addr()
	for range b.N {
		for _, size := range []int{10 << 10, 1 << 20, 10 << 20} {
			data := payload(size)
			name := fmt.Sprintf("%dKiB", size>>10)
			n := 21
			if size >= 10<<20 {
				n = 11
			}
			for _, pace := range []struct {
				name  string
				pause time.Duration
			}{{"burst", 0}, {"paced", 100 * time.Millisecond}} {
				lat := func(addr string) float64 {
					if pace.pause == 0 {
						return endOfData(b, addr, data, 1)
					}
					return endOfDataPaced(b, addr, data, 1, pace.pause)
				}
				samples := map[string][]float64{}
				for round := range n + 1 {
					take := func(k string, v float64) {
						if round > 0 { // round 0 warms up
							samples[k] = append(samples[k], v)
						}
					}
					take("clamd-fildes", clamdOwn(b, c, data, clamdFildes))
					take("clamd-instream", clamdOwn(b, c, data, clamdInstream))
					take("direct", lat(direct))
					take("noscan", lat(noscan.proxy))
					for _, m := range scanModes {
						take(m.name, lat(rigs[m.name].proxy))
					}
				}
				own := median(samples["clamd-fildes"])
				b.ReportMetric(own, fmt.Sprintf("clamd-fildes-%s-ms-%s", pace.name, name))
				b.ReportMetric(median(samples["clamd-instream"]), fmt.Sprintf("clamd-instream-%s-ms-%s", pace.name, name))
				b.ReportMetric(median(samples["direct"]), fmt.Sprintf("direct-%s-ms-%s", pace.name, name))
				b.ReportMetric(median(samples["noscan"]), fmt.Sprintf("noscan-%s-ms-%s", pace.name, name))
				line := fmt.Sprintf("%s %s: clamd fildes %.2f ms, instream %.2f ms; direct %.2f ms, proxy without scanner %.2f ms",
					name, pace.name, own, median(samples["clamd-instream"]), median(samples["direct"]), median(samples["noscan"]))
				for _, m := range scanModes {
					p := median(samples[m.name])
					b.ReportMetric(p, fmt.Sprintf("%s-%s-ms-%s", m.name, pace.name, name))
					b.ReportMetric(p/own, fmt.Sprintf("%s-%s-ratio-%s", m.name, pace.name, name))
					line += fmt.Sprintf("; %s %.2f ms (%.2fx)", m.name, p, p/own)
				}
				b.Log(line)
			}
		}
	}
}

// BenchmarkThroughputClamd: messages/s at 20 concurrent sessions with
// scanning on (each mode of scanModes), against the sink directly, for
// messages of 100 KiB (below the size at which a message is streamed) and
// 1 MiB. With scanning on, clamd is the bottleneck: its own rate for the
// same files, 20 FILDES scans at a time from here, and the proxy without
// scanner are measured too. Every round measures each way once, in turn;
// medians of three rounds after a warm-up. Ratios are to clamd's own rate.
func BenchmarkThroughputClamd(b *testing.B) {
	c := harness.Clamd(b)
	rigs := map[string]*rig{}
	for _, m := range scanModes {
		rigs[m.name] = clamdRig(b, c, m.tcp, m.stream)
	}
	noscan := scanRig(b)
	direct := rigs["fildes"].sink.Addr()
	for range b.N {
		for _, size := range []int{100 << 10, 1 << 20} {
			data := payload(size)
			name := fmt.Sprintf("%dKiB", size>>10)
			per := 20
			if size >= 1<<20 {
				per = 5
			}
			rate := func(addr string, per int) float64 {
				msgs, _ := throughput(b, addr, 20, per, data)
				return msgs
			}
			samples := map[string][]float64{}
			for round := range 4 {
				take := func(k string, v float64) {
					if round > 0 {
						samples[k] = append(samples[k], v)
					}
				}
				take("clamd", clamdRate(b, c, data, 20, per))
				take("direct", rate(direct, per))
				take("noscan", rate(noscan.proxy, per))
				for _, m := range scanModes {
					take(m.name, rate(rigs[m.name].proxy, per))
				}
			}
			own := median(samples["clamd"])
			b.ReportMetric(own, "clamd-scans/s-"+name)
			b.ReportMetric(median(samples["direct"]), "direct-msgs/s-"+name)
			b.ReportMetric(median(samples["noscan"]), "noscan-msgs/s-"+name)
			line := fmt.Sprintf("%s: clamd alone %.0f scans/s; direct %.0f msgs/s, proxy without scanner %.0f", name, own,
				median(samples["direct"]), median(samples["noscan"]))
			for _, m := range scanModes {
				p := median(samples[m.name])
				b.ReportMetric(p, m.name+"-msgs/s-"+name)
				b.ReportMetric(p/own, m.name+"-ratio-"+name)
				line += fmt.Sprintf("; %s %.0f (%.2fx)", m.name, p, p/own)
			}
			b.Log(line)
		}
	}
}

// clamdRate is clamd's own rate, scans/s, for workers clients each
// scanning per spool images of data (FILDES), made beforehand.
func clamdRate(b *testing.B, c *harness.ClamdServer, data []byte, workers, per int) float64 {
	imgs := make([][]string, workers)
	for w := range workers {
		for range per {
			imgs[w] = append(imgs[w], spoolImage(b, data, time.Now().UnixNano()))
		}
	}
	defer func() {
		for _, l := range imgs {
			for _, img := range l {
				os.Remove(img)
			}
		}
	}()
	d := run(b, workers, func(w int) error {
		for _, img := range imgs[w] {
			if _, err := fildesScan(c.Socket, img); err != nil {
				return err
			}
		}
		return nil
	})
	return float64(workers*per) / d.Seconds()
}
