package master

import (
	"runtime"
	"syscall"
	"time"

	"smtp-gated/internal/config"
)

// The descriptors a session worker needs: up to three per session (the
// client's socket, the MTA's, and the spool file during a message), and
// some of its own (its links to the other processes, its log). Master
// needs one per connection it accepted and has not handed over yet.
const (
	fdsPerSession = 3
	fdsReserve    = 64
)

// raiseNofile makes RLIMIT_NOFILE large enough for max_connections
// sessions spread over the session workers, before they start (they
// inherit it): it raises the soft limit, and the hard one when master may
// (root with CAP_SYS_RESOURCE). It returns how many sessions a session
// worker can hold within the limit it got; pickWorker gives none more,
// since a worker out of descriptors could not take the next client's
// socket (0: not known). When that is fewer than max_connections needs,
// the log says why.
func (m *master) raiseNofile(cfg *config.Config) int {
	workers := int(cfg.SessionWorkers)
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	perWorker := (int(cfg.MaxConnections) + workers - 1) / workers
	need := uint64(max(fdsPerSession*perWorker, int(cfg.MaxConnections)) + fdsReserve)
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		m.log.Warningf("RLIMIT_NOFILE: %v", err)
		return 0
	}
	if uint64(rl.Cur) < need {
		// syscall's Setrlimit, not x/sys/unix's: os/exec then gives the
		// children this limit rather than the one the process started with.
		want := rl
		setLimit(&want.Cur, need)
		if uint64(want.Max) < need {
			setLimit(&want.Max, need)
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			want = rl
			want.Cur = want.Max
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
		}
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	capacity := max((int(min(uint64(rl.Cur), 1<<30))-fdsReserve)/fdsPerSession, 1)
	if uint64(rl.Cur) < need {
		m.log.Warningf("RLIMIT_NOFILE is %d and could not be raised to %d: a session worker holds at most %d sessions "+
			"(%d descriptors each), %d in all with %d session workers, fewer than max_connections %d; "+
			"raise the hard limit (ulimit -Hn, LimitNOFILE=) or session_workers",
			rl.Cur, need, capacity, fdsPerSession, capacity*workers, workers, cfg.MaxConnections)
	}
	return capacity
}

// setLimit sets a field of syscall.Rlimit, whose type differs between
// systems.
func setLimit[T int64 | uint64](f *T, v uint64) { *f = T(v) }

// room reports whether session worker p may take one more session within
// its descriptors (a.workerCap 0: not known, no limit). Called with a.mu
// held.
func (a *admission) room(p *proc) bool { return a.workerCap == 0 || p.sessions < a.workerCap }

// full reports whether every session worker holds as many sessions as
// its descriptors allow. Called with a.mu held.
func (a *admission) full() bool {
	for _, p := range a.workers {
		if a.room(p) {
			return false
		}
	}
	return len(a.workers) > 0
}

// warnFull logs, at most once a minute, that a session was refused
// because every session worker holds as many sessions as its descriptors
// allow. Called with a.mu held.
func (a *admission) warnFull() {
	if time.Since(a.fullWarned) < time.Minute {
		return
	}
	a.fullWarned = time.Now()
	a.log.Warningf("session refused: every session worker holds %d sessions, as many as RLIMIT_NOFILE allows "+
		"(%d descriptors a session); raise the hard limit or session_workers", a.workerCap, fdsPerSession)
}
