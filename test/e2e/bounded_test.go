package e2e

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// silentSetup is a daemon with one session worker in front of an MTA that
// answers EHLO and then nothing.
func silentSetup(t *testing.T, extra string) (*harness.Daemon, string, int) {
	t.Helper()
	_, mport, _ := net.SplitHostPort(harness.SilentMTA(t))
	dir := harness.DaemonDir(t, "sge-")
	port := harness.FreePort(t)
	d := harness.StartDaemon(t, harness.FixedConfig(mport, port, dir)+`session_workers 1
log_level debug
timeout_idle 5
`+extra+"\n")
	d.WaitLog(t, regexp.MustCompile(`master: session 0 ready`), 10*time.Second)
	w := d.SessionWorkers()
	if len(w) != 1 {
		t.Fatalf("session workers %v, want one", w)
	}
	return d, fmt.Sprintf("127.0.0.1:%d", port), w[0]
}

// A client that pipelines NOOPs without pause against an MTA that stopped
// answering: the proxy stops reading it once its queue is full, so the
// session worker's memory does not grow with what the client sends, and
// the session writes a handful of log lines, not one per command.
func TestPipelinedNOOPSilentMTA(t *testing.T) {
	for _, pipeline := range []string{"128", "0"} {
		t.Run("pipeline_size="+pipeline, func(t *testing.T) {
			d, addr, worker := silentSetup(t, "pipeline_size "+pipeline)
			before, err := harness.ProcStatusKiB(worker, "VmRSS")
			if err != nil {
				t.Fatal(err)
			}
			mark := d.Mark()
			// 20 MB is more than the socket buffers on both sides hold:
			// the writes stall once the proxy stops reading.
			n, c, err := harness.PipelineNOOPs(addr, 20<<20, time.Second)
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			hwm, err := harness.ProcStatusKiB(worker, "VmHWM")
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			// Not read, the client's close is seen when the MTA's
			// silence reaches timeout_idle.
			d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=`), 15*time.Second)
			lines := d.LogSince(mark)
			growth := hwm - before
			t.Logf("%d bytes of NOOPs written; worker RSS %d KiB before, peak %d KiB (+%d KiB); %d log lines",
				n, before, hwm, growth, len(lines))
			if growth > 8<<10 {
				t.Errorf("the worker grew by %d KiB for one session", growth)
			}
			if len(lines) >= 100 {
				t.Errorf("%d log lines for one session; the first ones:\n%s", len(lines), strings.Join(lines[:20], "\n"))
			}
		})
	}
}
