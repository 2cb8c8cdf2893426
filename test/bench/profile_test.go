package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// profileFor is how long a profiled load runs at least: the load is
// repeated until then.
const profileFor = 4 * time.Second

// profile records every process of the daemon with perf(1) while load
// runs (repeated for profileFor), each process in a file of its own,
// DIR/LOAD-ROLE-PID.data, and writes perf's report of each beside it
// (.txt: the functions where the samples fell, highest first, by self
// time and then with the time of what they called).
// Without perf it logs why and does nothing.
func profile(b *testing.B, dir, name string, d *harness.Daemon, load func()) {
	b.Helper()
	perf, err := exec.LookPath("perf")
	if err != nil {
		b.Logf("profile %s: perf not installed", name)
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	type rec struct {
		cmd  *exec.Cmd
		data string
	}
	var recs []rec
	for _, pid := range append([]int{d.Pid()}, harness.ChildPids(d.Pid())...) {
		data := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.data", name, role(pid), pid))
		cmd := exec.Command(perf, "record", "-q", "-g", "-F", "499", "-p", fmt.Sprint(pid), "-o", data)
		if err := cmd.Start(); err != nil {
			b.Logf("profile %s: %v", name, err)
			continue
		}
		recs = append(recs, rec{cmd, data})
	}
	time.Sleep(500 * time.Millisecond) // perf attaches
	for t0 := time.Now(); time.Since(t0) < profileFor; {
		load()
	}
	for _, r := range recs {
		r.cmd.Process.Signal(syscall.SIGINT)
	}
	for _, r := range recs {
		r.cmd.Wait()
		var rep []byte
		for _, mode := range []string{"--no-children", "--children"} {
			out, err := exec.Command(perf, "report", "-i", r.data, "--stdio", mode,
				"--sort", "symbol", "-g", "none", "--percent-limit", "0.5").Output()
			if err != nil {
				b.Logf("profile %s: perf report %s: %v", name, r.data, err)
				break
			}
			rep = append(rep, out...)
		}
		os.WriteFile(strings.TrimSuffix(r.data, ".data")+".txt", rep, 0o644)
	}
	b.Logf("profile %s: %d processes recorded in %s", name, len(recs), dir)
}

// role is the daemon's role of pid: "master", or the ROLE of
// "-child ROLE".
func role(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "gone"
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	for i, a := range args {
		if a == "-child" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "master"
}
