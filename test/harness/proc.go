package harness

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago
// (listen on port 0, close). Another process may take it before the caller
// binds it; on this machine that is rare enough for tests.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort(false)
	if err != nil {
		t.Fatalf("FreePort: %v", err)
	}
	return p
}

// freePort finds a port free on 127.0.0.1 and, when both is set and the
// machine has IPv6 loopback, on [::1] too.
func freePort(both bool) (int, error) {
	var last error
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if both && HasIPv6Loopback() {
			l6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port))
			if err != nil {
				l.Close()
				last = err
				continue
			}
			l6.Close()
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no port free on both 127.0.0.1 and [::1]: %w", last)
}

// HasIPv6Loopback reports whether ::1 is configured (lo carries it unless
// IPv6 is disabled on the machine).
func HasIPv6Loopback() bool {
	b, err := os.ReadFile("/proc/net/if_inet6")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "00000000000000000000000000000001 ") {
			return true
		}
	}
	return false
}

// procStat is the part of /proc/PID/stat the harness uses.
type procStat struct {
	pid, ppid, pgrp int
	state           byte
	start           uint64 // start time in clock ticks since boot
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(pid, string(b))
}

// parseProcStat parses "pid (comm) state ppid pgrp ... starttime ...". comm
// may contain spaces and parentheses: the fields start after the last ')'.
func parseProcStat(pid int, s string) (procStat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0]=state(3) f[1]=ppid(4) f[2]=pgrp(5) ... f[19]=starttime(22)
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed /proc stat")
	}
	st := procStat{pid: pid, state: f[0][0]}
	var err1, err2, err3 error
	st.ppid, err1 = strconv.Atoi(f[1])
	st.pgrp, err2 = strconv.Atoi(f[2])
	st.start, err3 = strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat: %w", err)
	}
	return st, nil
}

// allProcs returns the stat of every live process; zombies are left out
// (they are dead, only not reaped yet: PID 1 may reap late on this machine).
func allProcs() []procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil || st.state == 'Z' || st.state == 'X' {
			continue // gone meanwhile, or dead
		}
		out = append(out, st)
	}
	return out
}

// ChildPids returns the live processes whose parent is pid (from /proc),
// sorted.
func ChildPids(pid int) []int {
	var out []int
	for _, p := range allProcs() {
		if p.ppid == pid {
			out = append(out, p.pid)
		}
	}
	sort.Ints(out)
	return out
}

// Descendants returns every live process below pid (children, their
// children, ...), sorted.
func Descendants(pid int) []int {
	procs := allProcs()
	kids := map[int][]int{}
	for _, p := range procs {
		kids[p.ppid] = append(kids[p.ppid], p.pid)
	}
	var out []int
	todo := []int{pid}
	for len(todo) > 0 {
		p := todo[0]
		todo = todo[1:]
		for _, c := range kids[p] {
			out = append(out, c)
			todo = append(todo, c)
		}
	}
	sort.Ints(out)
	return out
}

// ProcessGroup returns the live members of process group pgid, sorted.
func ProcessGroup(pgid int) []int {
	var out []int
	for _, p := range allProcs() {
		if p.pgrp == pgid {
			out = append(out, p.pid)
		}
	}
	sort.Ints(out)
	return out
}

// pidAlive reports whether pid exists and is not a zombie; if start is not
// zero, it must also have that start time (pid reuse).
func pidAlive(pid int, start uint64) bool {
	st, err := readProcStat(pid)
	if err != nil || st.state == 'Z' || st.state == 'X' {
		return false
	}
	return start == 0 || st.start == start
}

// Token returns a string unique to this call, to put in a message and find
// it again in the shared Postfix's Maildir: "tok-<test name>-<random hex>".
func Token(t testing.TB) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("Token: %v", err)
	}
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	return "tok-" + name + "-" + hex.EncodeToString(b[:])
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// ModuleRoot returns the directory of this module's go.mod: found by walking
// up from the working directory (go test runs a test in its package's
// directory), else from this source file's directory.
func ModuleRoot() (string, error) {
	rootOnce.Do(func() {
		var starts []string
		if wd, err := os.Getwd(); err == nil {
			starts = append(starts, wd)
		}
		if _, file, _, ok := runtime.Caller(0); ok {
			starts = append(starts, filepath.Dir(file))
		}
		for _, dir := range starts {
			for d := dir; ; d = filepath.Dir(d) {
				b, err := os.ReadFile(filepath.Join(d, "go.mod"))
				if err == nil && isOurGoMod(b) {
					rootDir = d
					return
				}
				if filepath.Dir(d) == d {
					break
				}
			}
		}
		rootErr = errors.New("go.mod of module smtp-gated not found above the working directory")
	})
	return rootDir, rootErr
}

func isOurGoMod(b []byte) bool {
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == "smtp-gated" {
			return true
		}
	}
	return false
}
