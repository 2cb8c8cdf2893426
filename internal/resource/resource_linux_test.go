package resource

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
)

// The action script gets the limits below the floors from sh's ulimit;
// without any, it runs as it is.
func TestScript(t *testing.T) {
	cfg := config.Default() // 64M each
	out, err := Script(cfg, "/bin/sh", "-c", `ulimit -v; ulimit -d; echo "$0" "$1"`, "a b", "c").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(out); got != "65536\n65536\na b c\n" {
		t.Errorf("script under the default limits printed %q, want 65536 KiB twice and its arguments", got)
	}
	cfg.LimitVirtSize, cfg.LimitDataSize = -1, 8<<30
	if c := Script(cfg, "/bin/true"); c.Path != "/bin/true" || len(c.Args) != 1 {
		t.Errorf("nothing to limit, and the script runs through %v", c.Args)
	}
	// 0, as 1.4 read it, leaves the limits alone: the script is not
	// given an address space of 0 bytes.
	cfg.LimitVirtSize, cfg.LimitDataSize = 0, 0
	if c := Script(cfg, "/bin/true"); c.Path != "/bin/true" || len(c.Args) != 1 {
		t.Errorf("limit_virt_size 0 and limit_data_size 0, and the script runs through %v", c.Args)
	}
}

// limit_fsize sets 8192 bytes more than the largest of itself and the
// largest spool file, as 1.4 did.
func TestFileSize(t *testing.T) {
	for _, tt := range []struct {
		fsize      int64
		scan, spam uint64
		want       int64
	}{
		{0, 10000000, 500000, 10008192},
		{0, 0, 0, 8192},
		{100 << 20, 10000000, 500000, 100<<20 + 8192},
		{1000, 0, 5000, 13192},
	} {
		cfg := config.Default()
		cfg.LimitFsize, cfg.ScanMaxSize, cfg.SpamMaxSize = tt.fsize, tt.scan, tt.spam
		if got := FileSize(cfg); got != tt.want {
			t.Errorf("limit_fsize %d, scan_max_size %d, spam_max_size %d: %d, want %d", tt.fsize, tt.scan, tt.spam, got, tt.want)
		}
	}
}

const childEnv = "RESOURCE_TEST_CHILD"

// Apply in a process of its own (it changes the process's limits): the
// limits are set, those below a floor are not, and the priority reaches
// every thread, those created before and after.
func TestApply(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		applyChild()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestApply$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "CHILD OK") {
		t.Fatalf("child said:\n%s", out)
	}
}

func applyChild() {
	fail := func(f string, a ...any) { fmt.Printf(f+"\n", a...); os.Exit(1) }
	// Threads that exist before Apply.
	var wg sync.WaitGroup
	hold := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() { runtime.LockOSThread(); wg.Done(); <-hold }()
	}
	wg.Wait()
	var before unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_AS, &before)
	cfg := config.Default()
	cfg.LimitCoreSize, cfg.LimitFsize, cfg.LimitDataSize, cfg.Priority = 1<<20, 3<<20-8192, 0, 4
	cfg.ScanMaxSize, cfg.SpamMaxSize = 1<<20, 1<<20
	notes := Apply(cfg)
	if len(notes) != 1 || !strings.Contains(notes[0].Msg, "limit_virt_size 67108864: not applied") || !notes[0].Default {
		fail("notes %+v, want one for limit_virt_size, at its default", notes)
	}
	for res, want := range map[int]uint64{unix.RLIMIT_CORE: 1 << 20, unix.RLIMIT_FSIZE: 3 << 20, unix.RLIMIT_AS: before.Cur} {
		var rl unix.Rlimit
		unix.Getrlimit(res, &rl)
		if rl.Cur != want {
			fail("limit %d is %d, want %d", res, rl.Cur, want)
		}
	}
	// A thread created after Apply.
	wg.Add(1)
	go func() { runtime.LockOSThread(); wg.Done(); <-hold }()
	wg.Wait()
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]); f[16] != "4" {
			fail("thread %s has nice %s, want 4", e.Name(), f[16])
		}
	}
	// Over limit_fsize: a write error, not SIGXFSZ.
	f, _ := os.CreateTemp("", "fsize")
	defer os.Remove(f.Name())
	if _, err := f.Write(make([]byte, 4<<20)); err == nil {
		fail("wrote 4 MiB under a 3 MiB limit_fsize")
	}
	fmt.Println("CHILD OK")
}
