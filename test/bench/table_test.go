package bench

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// Environment variables BenchmarkTable reads.
const (
	// EnvTable names a file the table is written to as well as to
	// standard output (`make bench`: bench.txt).
	EnvTable = "SMTPGATED_BENCH_TABLE"
	// EnvProfile names a directory: after the measured rounds, one more
	// run of the bulk, small, pipelined and clamd loads through the proxy
	// is recorded with perf(1), each of the daemon's processes on its
	// own, and perf's report of each is written there (profile_test.go).
	EnvProfile = "SMTPGATED_BENCH_PROFILE"
	// EnvRows, when set, names the loads to measure, separated by commas
	// (idle, bulk, small, pipelined, scale, clamd; `make bench
	// BENCH_ROWS=idle`): the others are left out of the table.
	EnvRows = "SMTPGATED_BENCH_ROWS"
)

// wanted reports whether load is to be measured (see EnvRows).
func wanted(load string) bool {
	rows := os.Getenv(EnvRows)
	return rows == "" || slices.Contains(strings.Split(rows, ","), load)
}

// The loads of the table.
const (
	rounds      = 5 // measured rounds of the three main loads, after a warm-up round
	scaleRounds = 3 // of the scale rows
	idleN       = 2000
	dotSamples  = 5 // messages per round of the final-dot row
)

// row is one line of the table: the samples of each path, one per round,
// in the order they were taken (round i of every path ran back to back).
type row struct {
	name    string
	unit    string // of the figure: "MB/s", "sessions/s", ...
	direct  samples
	haproxy samples
	proxy   samples
	goal    *goal
}

// samples are one path's figures, one per round: the figure, and the CPU
// time of the relay's processes per unit of work (ms per MB, per
// session, per message), when the path is through a relay.
type samples struct{ v, cpu []float64 }

// path is one way to the sink (or clamd): its address, and the relay's
// processes whose CPU time is counted (nil: none, the direct path).
type path struct {
	addr string
	pids func() []int
}

// goal is the project's target for a row, checked on the medians.
type goal struct {
	text string
	met  func(direct, haproxy, proxy float64) bool
}

var (
	vsHAProxy = &goal{"≥ 0.8× HAProxy", func(_, h, p float64) bool { return h > 0 && p >= 0.8*h }}
	vsClamd   = &goal{"≥ 0.6× clamd alone", func(d, _, p float64) bool { return p >= 0.6*d }}
	dotGoal   = &goal{"≤ 1.1× clamd + 1 ms", func(d, _, p float64) bool { return p <= 1.1*d+1 }}
	idleGoal  = &goal{"≤ 24 KiB", func(_, _, p float64) bool { return p <= 24 }}
)

// measure runs f, which returns a rate (units of work per second), on
// every path in turn: a warm-up round, then n rounds. A path without an
// address is not measured (HAProxy not installed). The CPU time the
// relay's processes spent during a run, divided by the work done, is the
// cost of a unit of work: on a machine shared with other work it varies
// much less than the rates do.
func measure(b *testing.B, n int, paths []path, f func(addr string) float64) []samples {
	out := make([]samples, len(paths))
	for r := range n + 1 {
		for i, p := range paths {
			if p.addr == "" {
				continue
			}
			var c0 time.Duration
			if p.pids != nil {
				c0 = cpuTime(b, p.pids())
			}
			t0 := time.Now()
			v := f(p.addr)
			work := v * time.Since(t0).Seconds()
			if r == 0 {
				continue
			}
			out[i].v = append(out[i].v, v)
			if p.pids != nil && work > 0 {
				out[i].cpu = append(out[i].cpu, float64(cpuTime(b, p.pids())-c0)/float64(time.Millisecond)/work)
			}
		}
	}
	return out
}

// cpuTime sums the time the processes' threads have run, from
// /proc/PID/task/TID/schedstat (nanoseconds; /proc/PID/stat counts in
// ticks of 10 ms, too coarse for HAProxy's share of a short run). The
// relays' threads live as long as the relay, so none is lost in between.
func cpuTime(b *testing.B, pids []int) time.Duration {
	b.Helper()
	var ns int64
	for _, p := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range tasks {
			s, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", p, t.Name()))
			if err != nil {
				continue // the thread is gone
			}
			f := strings.Fields(string(s))
			if len(f) < 1 {
				b.Fatalf("/proc/%d/task/%s/schedstat: %q", p, t.Name(), s)
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/task/%s/schedstat: %q", p, t.Name(), s)
			}
			ns += n
		}
	}
	return time.Duration(ns)
}

// BenchmarkTable is `make bench`: every figure of the table measured in one
// run, side by side, on the same in-memory sink MTA — directly, through
// HAProxy in mode tcp, and through smtp-gated with scanners off — and, with
// clamd scanning every message, against the same clamd driven directly.
// It prints one table (see README.md, "Performance"). The machine is
// shared by the clients, the relays, the sink and clamd: every round
// measures each path once, in turn; the table shows the medians of the
// rounds and the range of the per-round ratios.
func BenchmarkTable(b *testing.B) {
	for range b.N {
		table(b)
	}
}

func table(b *testing.B) {
	start := time.Now()
	r := scanRig(b)
	h := startHAProxy(b, r.sink.Addr())
	hap := ""
	if h != nil {
		hap = h.addr
	}
	daemonPids := func() []int { return append([]int{r.daemon.Pid()}, harness.ChildPids(r.daemon.Pid())...) }
	paths := []path{{addr: r.sink.Addr()}, {addr: hap, pids: func() []int { return []int{h.pid()} }}, {addr: r.proxy, pids: daemonPids}}
	var rows []row
	add := func(name, unit string, g *goal, s []samples) {
		rows = append(rows, row{name: name, unit: unit, direct: s[0], haproxy: s[1], proxy: s[2], goal: g})
		b.Logf("%s, %s: direct %.1f, HAProxy %.1f %.3f, proxy %.1f %.3f", name, unit, s[0].v, s[1].v, s[1].cpu, s[2].v, s[2].cpu)
	}
	only := func(v []float64) samples { return samples{v: v} }

	// Idle sessions first, on a daemon that has served nothing yet: what
	// the workers' memory grows by is what the sessions hold, not a heap
	// grown by the loads before.
	if wanted("idle") {
		var hidle []float64
		if h != nil {
			hidle = []float64{idlePSS(b, h.addr, idleN, func() []int { return []int{h.pid()} })}
		}
		idle := []float64{idlePSS(b, r.proxy, idleN, func() []int { return children(r.daemon, "session") })}
		add(fmt.Sprintf("idle sessions: %d after EHLO (smtp-gated: its session workers)", idleN), "KiB PSS each", idleGoal,
			[]samples{{}, only(hidle), only(idle)})
	}

	bulk := payload(100 << 10)
	small := payload(4 << 10)
	bulkLoad := func(addr string) float64 {
		_, mb := throughput(b, addr, 20, 5, bulk)
		return mb
	}
	var refused atomic.Int64 // sessions refused at the greeting, by any path
	smallLoad := func(addr string) float64 { return greeted(b, addr, 50, 10, small, &refused) }
	pipeLoad := func(addr string) float64 { return pipelined(b, addr, 10, 20, 50, small) }
	if wanted("bulk") {
		add("bulk: 20 sessions × 5 msgs × 100 KiB", "MB/s", vsHAProxy, measure(b, rounds, paths, bulkLoad))
	}
	if wanted("small") {
		s := measure(b, rounds, paths, smallLoad)
		name := "small: 50 concurrent × 1 msg × 4 KiB"
		if n := refused.Load(); n > 0 {
			name += fmt.Sprintf(" (%d sessions refused with 421)", n)
		}
		add(name, "sessions/s", vsHAProxy, s)
	}
	if wanted("pipelined") {
		add("pipelined: 10 concurrent × 20 msgs × 50 RCPTs × 4 KiB", "msgs/s", vsHAProxy, measure(b, rounds, paths, pipeLoad))
	}
	prof := os.Getenv(EnvProfile)
	if prof != "" {
		if wanted("bulk") {
			profile(b, prof, "bulk", r.daemon, func() { bulkLoad(r.proxy) })
		}
		if wanted("small") {
			profile(b, prof, "small", r.daemon, func() { smallLoad(r.proxy) })
		}
		if wanted("pipelined") {
			profile(b, prof, "pipelined", r.daemon, func() { pipeLoad(r.proxy) })
		}
	}

	// Cost grows linearly: sessions/s as clients are added, MB/s as
	// messages grow.
	if wanted("scale") {
		for _, c := range []struct{ workers, each int }{{10, 100}, {100, 10}, {1000, 2}} {
			refused.Store(0)
			s := measure(b, scaleRounds, paths, func(addr string) float64 { return greeted(b, addr, c.workers, c.each, small, &refused) })
			name := fmt.Sprintf("scale: %d concurrent clients × 1 msg × 4 KiB", c.workers)
			if n := refused.Load(); n > 0 {
				name += fmt.Sprintf(" (%d of %d sessions refused with 421)", n, (scaleRounds+1)*c.workers*c.each*len(paths))
			}
			add(name, "sessions/s", nil, s)
		}
		for _, s := range []struct{ size, each int }{{4 << 10, 100}, {100 << 10, 10}, {1 << 20, 2}, {10 << 20, 1}} {
			data := payload(s.size)
			add(fmt.Sprintf("scale: 10 sessions × %d msgs × %s", s.each, sizeName(s.size)), "MB/s", nil,
				measure(b, scaleRounds, paths, func(addr string) float64 {
					_, mb := throughput(b, addr, 10, s.each, data)
					return mb
				}))
		}
	}

	// clamd scanning every message (FILDES over its unix socket, the
	// default), against the same clamd driven directly from here.
	switch {
	case !wanted("clamd"):
	case clamdUsable():
		c := harness.Clamd(b)
		cr := clamdRig(b, c, false, "auto")
		var own, via []float64
		for round := range rounds + 1 {
			o := clamdRate(b, c, bulk, 20, 10)
			v, _ := throughput(b, cr.proxy, 20, 10, bulk)
			if round > 0 {
				own, via = append(own, o), append(via, v)
			}
		}
		add("clamd: 20 concurrent × 100 KiB (direct: clamd alone)", "scans/s", vsClamd, []samples{only(own), {}, only(via)})
		// One message at a time, 20 ms between the body and the dot (the
		// whole body has arrived: what is timed is the scan and the
		// reply); each round is the median of dotSamples messages, taken
		// in turn with clamd's own scan of a file of the same size.
		own, via = nil, nil
		for round := range rounds + 1 {
			var o, v []float64
			for range dotSamples {
				o = append(o, clamdOwn(b, c, bulk, clamdFildes))
				v = append(v, endOfDataPaced(b, cr.proxy, bulk, 1, 20*time.Millisecond))
			}
			if round > 0 {
				own, via = append(own, median(o)), append(via, median(v))
			}
		}
		add("clamd: final dot → reply, 100 KiB (direct: clamd's own scan)", "ms, p50", dotGoal, []samples{only(own), {}, only(via)})
		if prof != "" {
			profile(b, prof, "clamd", cr.daemon, func() { throughput(b, cr.proxy, 20, 10, bulk) })
		}
	default:
		b.Log("clamd not usable (needs root and clamav-daemon): no clamd rows")
	}

	out := formatTable(rows, haproxyVersion(), time.Since(start))
	fmt.Print("\n" + out)
	if path := os.Getenv(EnvTable); path != "" {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			b.Error(err)
		}
	}
	for _, rw := range rows {
		load := strings.TrimSuffix(strings.Fields(rw.name)[0], ":")
		if (load == "bulk" || load == "small" || load == "pipelined") && len(rw.haproxy.v) > 0 {
			b.ReportMetric(median(rw.proxy.v)/median(rw.haproxy.v), "ratio-HAProxy-"+load)
			b.ReportMetric(median(rw.proxy.cpu)/median(rw.haproxy.cpu), "cpu-ratio-HAProxy-"+load)
		}
	}
}

// greeted is sessions, where a session refused at the greeting with 421
// (the daemon's admission: a worker's hand-off queue is full) is counted
// in refused instead of failing the benchmark; it returns the sessions
// that ran, per second.
func greeted(b *testing.B, addr string, workers, each int, data []byte, refused *atomic.Int64) float64 {
	var ran atomic.Int64
	d := run(b, workers, func(int) error {
		for range each {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(120 * time.Second))
			cl := &client{c: c, r: bufio.NewReaderSize(c, 4096), w: bufio.NewWriterSize(c, 64*1024)}
			code, err := cl.reply()
			if err == nil && code == 421 {
				refused.Add(1)
				c.Close()
				continue
			}
			if err == nil && code != 220 {
				err = fmt.Errorf("greeting %d", code)
			}
			if err == nil {
				err = cl.cmd("EHLO bench.test", 250)
			}
			if err == nil {
				err = cl.mail(data)
			}
			if err == nil {
				err = cl.cmd("QUIT", 221)
			}
			c.Close()
			if err != nil {
				return err
			}
			ran.Add(1)
		}
		return nil
	})
	return float64(ran.Load()) / d.Seconds()
}

// reply reads one (possibly multi-line) reply and returns its code.
func (cl *client) reply() (int, error) {
	for {
		line, err := cl.r.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if len(line) < 4 {
			return 0, fmt.Errorf("reply %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return 0, fmt.Errorf("reply %q", line)
		}
		if line[3] == ' ' {
			return code, nil
		}
	}
}

// pipelined runs workers sessions, each sending each messages to rcpts
// recipients, pipelined; it returns messages/s.
func pipelined(b *testing.B, addr string, workers, each, rcpts int, data []byte) float64 {
	d := run(b, workers, func(int) error {
		return session(addr, each, func(cl *client) error { return cl.mailTo(rcpts, data) })
	})
	return float64(workers*each) / d.Seconds()
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// clamdUsable says whether harness.Clamd can start clamd (it would skip
// the whole benchmark otherwise).
func clamdUsable() bool {
	if os.Geteuid() != 0 {
		return false
	}
	for _, p := range []string{"/usr/sbin/clamd", "/usr/bin/clamd"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}

// idlePSS opens n sessions on addr (greeted, after EHLO) and leaves them
// idle; it returns how much the PSS of pids() grew, in KiB per session.
// The sessions are closed before it returns.
func idlePSS(b *testing.B, addr string, n int, pids func() []int) float64 {
	b.Helper()
	// A few sessions first, so that what every first session pages in is
	// not counted.
	for range 10 {
		cl, err := dialEHLO(addr)
		if err != nil {
			b.Fatal(err)
		}
		cl.c.Close()
	}
	time.Sleep(200 * time.Millisecond)
	before := pssKiB(b, pids())
	var open []*client
	defer func() {
		for _, cl := range open {
			cl.c.Close()
		}
		time.Sleep(500 * time.Millisecond) // let the relays close them
	}()
	for range n {
		cl, err := dialEHLO(addr)
		if err != nil {
			b.Fatalf("idle session %d: %v", len(open)+1, err)
		}
		open = append(open, cl)
	}
	time.Sleep(200 * time.Millisecond)
	after := pssKiB(b, pids())
	return float64(after-before) / float64(n)
}

// children are the pids of the daemon's processes of role.
func children(d *harness.Daemon, name string) []int {
	var pids []int
	for _, p := range harness.ChildPids(d.Pid()) {
		if role(p) == name {
			pids = append(pids, p)
		}
	}
	return pids
}

// pssKiB sums the Pss of the processes, from /proc/PID/smaps_rollup.
func pssKiB(b *testing.B, pids []int) int {
	b.Helper()
	if len(pids) == 0 {
		b.Fatal("no process to measure")
	}
	total := 0
	for _, p := range pids {
		s, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.SplitSeq(string(s), "\n") {
			if v, ok := strings.CutPrefix(line, "Pss:"); ok {
				kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
				if err != nil {
					b.Fatalf("/proc/%d/smaps_rollup: %q", p, line)
				}
				total += kb
			}
		}
	}
	return total
}

func haproxyVersion() string {
	out, err := exec.Command("haproxy", "-v").Output()
	if err != nil {
		return "HAProxy"
	}
	f := strings.Fields(string(out))
	if len(f) >= 3 && f[0] == "HAProxy" {
		return "HAProxy " + f[2]
	}
	return "HAProxy"
}

// formatTable writes the rows as a Markdown table, with a heading that
// says how the figures were taken.
func formatTable(rows []row, hv string, took time.Duration) string {
	var s strings.Builder
	fmt.Fprintf(&s, "smtp-gated benchmark, %s, %d CPUs, %s; %d rounds after a warm-up (scale rows: %d),\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), hv, rounds, scaleRounds)
	fmt.Fprintf(&s, "medians of the rounds; ratios: median (lowest–highest) of the per-round ratios; took %v.\n\n", took.Round(time.Second))
	s.WriteString("| load | figure | direct | HAProxy | smtp-gated | smtp-gated / HAProxy | smtp-gated / direct" +
		" | CPU ms per unit: HAProxy | smtp-gated | smtp-gated / HAProxy | goal |\n")
	s.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		g := "–"
		if r.goal != nil {
			g = r.goal.text
			if r.goal.met(medianOr(r.direct.v), medianOr(r.haproxy.v), medianOr(r.proxy.v)) {
				g += ": met"
			} else {
				g += ": not met"
			}
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.name, r.unit,
			num(r.direct.v), num(r.haproxy.v), num(r.proxy.v), ratios(r.proxy.v, r.haproxy.v), ratios(r.proxy.v, r.direct.v),
			num(r.haproxy.cpu), num(r.proxy.cpu), ratios(r.proxy.cpu, r.haproxy.cpu), g)
	}
	return s.String()
}

func medianOr(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return median(v)
}

// num is the median of v, with three significant digits or so.
func num(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	m := median(v)
	switch {
	case m >= 100:
		return fmt.Sprintf("%.0f", m)
	case m >= 10:
		return fmt.Sprintf("%.1f", m)
	case m >= 0.1:
		return fmt.Sprintf("%.2f", m)
	}
	return fmt.Sprintf("%.3f", m)
}

// ratios is the median and range of p[i]/q[i] over the rounds.
func ratios(p, q []float64) string {
	if len(p) == 0 || len(q) == 0 {
		return "–"
	}
	var r []float64
	for i := range min(len(p), len(q)) {
		if q[i] > 0 {
			r = append(r, p[i]/q[i])
		}
	}
	if len(r) == 0 {
		return "–"
	}
	lo, m, hi := fmt.Sprintf("%.2f", slices.Min(r)), fmt.Sprintf("%.2f", median(r)), fmt.Sprintf("%.2f", slices.Max(r))
	if lo == hi {
		return m
	}
	return fmt.Sprintf("%s (%s–%s)", m, lo, hi)
}
