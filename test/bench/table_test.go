package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
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
	// run of the bulk, small and clamd loads through the proxy is recorded
	// with perf(1), each of the daemon's processes on its own, and perf's
	// report of each is written there (profile_test.go).
	EnvProfile = "SMTPGATED_BENCH_PROFILE"
)

// The loads of the table (issue 13).
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
	direct  []float64 // the sink directly; clamd alone in the clamd rows
	haproxy []float64 // HAProxy in mode tcp in front of the sink
	proxy   []float64 // smtp-gated in front of the sink
	goal    *goal
}

// goal is what issue 13 asks of a row, checked on the medians.
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

// measure runs f on every address in turn: a warm-up round, then n
// rounds. An empty address is not measured (HAProxy not installed).
func measure(n int, addrs []string, f func(addr string) float64) [][]float64 {
	out := make([][]float64, len(addrs))
	for r := range n + 1 {
		for i, a := range addrs {
			if a == "" {
				continue
			}
			if v := f(a); r > 0 {
				out[i] = append(out[i], v)
			}
		}
	}
	return out
}

// BenchmarkTable is `make bench`: every figure of issue 13 measured in one
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
	addrs := []string{r.sink.Addr(), hap, r.proxy}
	var rows []row
	add := func(name string, g *goal, s [][]float64) {
		rows = append(rows, row{name: name, direct: s[0], haproxy: s[1], proxy: s[2], goal: g})
		b.Logf("%s: direct %.1f, HAProxy %.1f, proxy %.1f", name, s[0], s[1], s[2])
	}

	// Idle sessions first, on a daemon that has served nothing yet: what
	// the workers' memory grows by is what the sessions hold, not a heap
	// grown by the loads before.
	idle := []float64(nil)
	var hidle []float64
	if h != nil {
		hidle = []float64{idlePSS(b, h.addr, idleN, func() []int { return []int{h.pid()} })}
	}
	idle = []float64{idlePSS(b, r.proxy, idleN, func() []int { return children(r.daemon, "session") })}
	add(fmt.Sprintf("idle sessions (%d, after EHLO): PSS each, KiB (smtp-gated: its session workers)", idleN), idleGoal,
		[][]float64{nil, hidle, idle})

	bulk := payload(100 << 10)
	small := payload(4 << 10)
	bulkLoad := func(addr string) float64 {
		_, mb := throughput(b, addr, 20, 5, bulk)
		return mb
	}
	smallLoad := func(addr string) float64 { return sessions(b, addr, 50, 10, small) }
	pipeLoad := func(addr string) float64 { return pipelined(b, addr, 10, 20, 50, small) }
	add("bulk: 20 sessions × 5 msgs × 100 KiB, MB/s", vsHAProxy, measure(rounds, addrs, bulkLoad))
	add("small: 50 concurrent × 1 msg × 4 KiB, sessions/s", vsHAProxy, measure(rounds, addrs, smallLoad))
	add("pipelined: 10 concurrent, 50 RCPTs, 4 KiB, msgs/s", vsHAProxy, measure(rounds, addrs, pipeLoad))
	prof := os.Getenv(EnvProfile)
	if prof != "" {
		profile(b, prof, "bulk", r.daemon, func() { bulkLoad(r.proxy) })
		profile(b, prof, "small", r.daemon, func() { smallLoad(r.proxy) })
	}

	// Cost grows linearly: sessions/s as clients are added, MB/s as
	// messages grow.
	for _, c := range []struct{ workers, each int }{{10, 100}, {100, 10}, {1000, 2}} {
		add(fmt.Sprintf("scale: %d concurrent clients × 1 msg × 4 KiB, sessions/s", c.workers), nil,
			measure(scaleRounds, addrs, func(addr string) float64 { return sessions(b, addr, c.workers, c.each, small) }))
	}
	for _, s := range []struct{ size, each int }{{4 << 10, 100}, {100 << 10, 10}, {1 << 20, 2}, {10 << 20, 1}} {
		data := payload(s.size)
		add(fmt.Sprintf("scale: 10 sessions × %d msgs × %s, MB/s", s.each, sizeName(s.size)), nil,
			measure(scaleRounds, addrs, func(addr string) float64 {
				_, mb := throughput(b, addr, 10, s.each, data)
				return mb
			}))
	}

	// clamd scanning every message (FILDES over its unix socket, the
	// default), against the same clamd driven directly from here.
	if clamdUsable() {
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
		add("clamd: 20 concurrent × 100 KiB, scans/s (direct: clamd alone)", vsClamd, [][]float64{own, nil, via})
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
		add("clamd: final dot → reply, 100 KiB, p50 ms (direct: clamd's own scan)", dotGoal, [][]float64{own, nil, via})
		if prof != "" {
			profile(b, prof, "clamd", cr.daemon, func() { throughput(b, cr.proxy, 20, 10, bulk) })
		}
	} else {
		b.Log("clamd not usable (needs root and clamav-daemon): no clamd rows")
	}

	out := formatTable(rows, haproxyVersion(), time.Since(start))
	fmt.Print("\n" + out)
	if path := os.Getenv(EnvTable); path != "" {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			b.Error(err)
		}
	}
	for _, rw := range rows[1:4] {
		if len(rw.haproxy) > 0 {
			b.ReportMetric(median(rw.proxy)/median(rw.haproxy), "ratio-HAProxy-"+strings.Fields(rw.name)[0])
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
	fmt.Fprintf(&s, "medians of the rounds; ratios: lowest–highest of the rounds; took %v.\n\n", took.Round(time.Second))
	s.WriteString("| measure | direct | HAProxy | smtp-gated | smtp-gated / HAProxy | smtp-gated / direct | goal |\n")
	s.WriteString("|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		g := "–"
		if r.goal != nil {
			g = r.goal.text
			if r.goal.met(medianOr(r.direct), medianOr(r.haproxy), medianOr(r.proxy)) {
				g += ": met"
			} else {
				g += ": not met"
			}
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s | %s | %s |\n", r.name,
			num(r.direct), num(r.haproxy), num(r.proxy), ratios(r.proxy, r.haproxy), ratios(r.proxy, r.direct), g)
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
	}
	return fmt.Sprintf("%.2f", m)
}

// ratios is the range of p[i]/q[i] over the rounds.
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
	lo, hi := slices.Min(r), slices.Max(r)
	if fmt.Sprintf("%.2f", lo) == fmt.Sprintf("%.2f", hi) {
		return fmt.Sprintf("%.2f", lo)
	}
	return fmt.Sprintf("%.2f–%.2f", lo, hi)
}
