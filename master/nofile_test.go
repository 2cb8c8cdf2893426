package master

import (
	"strings"
	"syscall"
	"testing"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
)

// A session worker gets no more sessions than its descriptors allow: the
// least loaded of the others does, and when none has room, admission says
// so in the log.
func TestPickWorkerWithinDescriptors(t *testing.T) {
	var log strings.Builder
	a := newAdmission(logx.To(&log, logx.Debug), nil, &registrar{})
	a.workerCap = 2
	w0, _ := bookWorker(0)
	w1, _ := bookWorker(1)
	a.workers = []*proc{w0, w1}
	a.mu.Lock()
	defer a.mu.Unlock()
	w0.sessions, w1.sessions = 2, 1
	if got, _ := a.pickWorker(nil); got != w1 {
		t.Errorf("picked %v, want %v (%v is full)", got, w1, w0)
	}
	w1.sessions = 2
	if got, _ := a.pickWorker(nil); got != nil {
		t.Errorf("picked %v, want none: both hold %d sessions", got, a.workerCap)
	}
	if !a.full() {
		t.Error("full() = false with every worker at its capacity")
	}
	a.warnFull()
	a.warnFull()
	if n := strings.Count(log.String(), "as many as RLIMIT_NOFILE allows"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, log.String())
	}
	a.workerCap = 0 // not known: no limit
	if got, _ := a.pickWorker(nil); got != w0 {
		t.Errorf("without a capacity picked %v, want %v", got, w0)
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
