package master

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// A session worker gets no more sessions than its descriptors allow: the
// least loaded of the others does, and when none has room, admission says
// so in the log.
func TestPickWorkerWithinDescriptors(t *testing.T) {
	var log strings.Builder
	m := &master{log: logx.To(&log, logx.Debug), workerCap: 2}
	now := time.Now()
	for i := range 2 {
		p := &proc{role: ipc.RoleSession, index: i, ready: true, link: &link{queue: make(chan uint64, 10)}}
		p.lastPong.Store(now.UnixNano())
		m.sessionProcs = append(m.sessionProcs, p)
	}
	a, b := m.sessionProcs[0], m.sessionProcs[1]
	a.sessions, b.sessions = 2, 1
	if got := m.pickWorker(nil); got != b {
		t.Errorf("picked %v, want %v (%v is full)", got, b, a)
	}
	b.sessions = 2
	if got := m.pickWorker(nil); got != nil {
		t.Errorf("picked %v, want none: both hold %d sessions", got, m.workerCap)
	}
	if !m.full() {
		t.Error("full() = false with every worker at its capacity")
	}
	m.warnFull()
	m.warnFull()
	if n := strings.Count(log.String(), "as many as RLIMIT_NOFILE allows"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, log.String())
	}
	m.workerCap = 0 // not known: no limit
	if got := m.pickWorker(nil); got != a {
		t.Errorf("without a capacity picked %v, want %v", got, a)
	}
}

// raiseNofile returns what the limit allows a worker, and warns when that
// is fewer sessions than max_connections needs and the limit could not be
// raised (a need above the system's maximum for one process).
func TestRaiseNofile(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.SessionWorkers = 2
	cfg.MaxConnections = 10
	var log strings.Builder
	m := &master{log: logx.To(&log, logx.Debug)}
	if got, want := m.raiseNofile(cfg), int((uint64(rl.Cur)-fdsReserve)/fdsPerSession); got != want {
		t.Errorf("max_connections 10: capacity %d, want %d", got, want)
	}
	if log.Len() != 0 {
		t.Errorf("max_connections 10: logged %q", log.String())
	}
	cfg.MaxConnections = 1 << 40 // more than any system gives one process
	got := m.raiseNofile(cfg)
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if want := int((uint64(rl.Cur) - fdsReserve) / fdsPerSession); got != want {
		t.Errorf("max_connections 2^40: capacity %d, want %d", got, want)
	}
	if !strings.Contains(log.String(), "could not be raised") {
		t.Errorf("max_connections 2^40: no warning; logged %q", log.String())
	}
}
