package bench

import (
	"fmt"
	"net"
	"regexp"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// BenchmarkPipelinedNOOPSilentMTA: one client pipelines 50 MB of NOOPs,
// without reading, to an MTA that answers EHLO and then nothing. Reported:
// the bytes the client could write before the proxy stopped reading it
// (the socket buffers of both sides included), the growth of the session
// worker's peak RSS (VmHWM) over its RSS before the session, and the log
// lines the session wrote (log_level debug). Goals: under 8 MiB and 100
// lines.
func BenchmarkPipelinedNOOPSilentMTA(b *testing.B) {
	_, mport, _ := net.SplitHostPort(harness.SilentMTA(b))
	dir := harness.DaemonDir(b, "sgb-")
	port := harness.FreePort(b)
	d := harness.StartDaemon(b, harness.FixedConfig(mport, port, dir)+`session_workers 1
log_level debug
timeout_idle 10
`)
	d.WaitLog(b, regexp.MustCompile(`master: session 0 ready`), 10*time.Second)
	workers := d.SessionWorkers()
	if len(workers) != 1 {
		b.Fatalf("session workers %v, want one", workers)
	}
	worker := workers[0]
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	closed := regexp.MustCompile(`CLOSE by=`)
	for range b.N {
		before, err := harness.ProcStatusKiB(worker, "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		mark := d.Mark()
		n, c, err := harness.PipelineNOOPs(addr, 50<<20, 2*time.Second)
		if err != nil {
			b.Fatalf("after %d bytes: %v", n, err)
		}
		hwm, err := harness.ProcStatusKiB(worker, "VmHWM")
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
		d.WaitLogAfter(b, mark, closed, 30*time.Second)
		lines := d.LogSince(mark)
		b.ReportMetric(float64(n)/(1<<20), "MiB-written")
		b.ReportMetric(float64(hwm-before)/1024, "MiB-peak-rss-growth")
		b.ReportMetric(float64(len(lines)), "log-lines")
	}
}
