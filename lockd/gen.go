package lockd

import (
	"sync"
	"sync/atomic"
	"time"
)

// beatEvery is the time between heartbeats; freshFor, in session/
// lockcache.go, is how old a heartbeat may be (1 s).
const beatEvery = 250 * time.Millisecond

// lockd's generation lets a session worker keep lockd's "not locked"
// answers instead of asking again for every session and every message
// (session/lockcache.go). It lives in a page that lockd shares with every
// worker (a sealed memfd: the workers can read it, nobody but lockd can
// write it), and lockd changes it, before it answers or acknowledges
// anything, whenever an unlocked client could have become locked:
//
//   - a lock made or removed (an event of lock_on, smtpgatectl lock and
//     unlock);
//   - a new configuration;
//   - any change in lock_path that lockd did not make itself: an
//     administrator's file made, removed, renamed, touched or given to
//     another owner. lockd learns of those through inotify, as soon as it
//     reads the event: until then a worker may still let in a session
//     whose lock check it had answered before, as 1.4 let in a session
//     that looked at lock_path just before the file was made.
//
// A worker reads the generation before it asks, keeps a "not locked"
// answer under that generation, and uses it only while the page still
// says the same: a lock lockd acknowledged is seen by every session
// checked after the acknowledgement, on every worker. Locked answers and
// anything with rate limits in it are never kept: rate-limit counts go
// to lockd one by one, as before.
//
// 0 means "keep nothing": before lock_path is watched, and whenever the
// watch is lost. Where there is no memfd or no inotify (not Linux), the
// workers get no page and ask every time.
//
// The page's second word is lockd's heartbeat: CLOCK_MONOTONIC, written
// every beatEvery, after a look at the inotify events not read yet (any
// is a change). A worker keeps nothing and uses nothing kept when the
// heartbeat is older than freshFor: a lockd that hangs (stopped, starved)
// cannot leave the workers trusting answers it can no longer invalidate.
// So an administrator's change in lock_path is honoured, at the latest,
// freshFor after it was made; in practice, when lockd reads the event.

// generation is lockd's side of the page.
type generation struct {
	p    *uint64 // the page's first word; nil: no page (the workers ask)
	beat *int64  // its second word: lockd's heartbeat
	fd   int     // the page's memfd, handed to every worker
	size int

	mu   sync.Mutex
	last uint64 // the last value stored, never given again
	on   bool   // lock_path is watched: answers may be kept
}

// value is the generation as the workers see it.
func (g *generation) value() uint64 {
	if g == nil || g.p == nil {
		return 0
	}
	return atomic.LoadUint64(g.p)
}

// bump gives the page a value it never had, when answers may be kept: an
// answer kept before is stale.
func (g *generation) bump() {
	if g == nil || g.p == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.on {
		g.last++
		atomic.StoreUint64(g.p, g.last)
	}
}

// enable lets the workers keep answers from now on (lock_path is
// watched), and disable stops them: nothing kept before counts again.
func (g *generation) enable() { g.set(true) }

func (g *generation) disable() { g.set(false) }

func (g *generation) set(on bool) {
	if g == nil || g.p == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.on = on
	v := uint64(0)
	if on {
		g.last++
		v = g.last
	}
	atomic.StoreUint64(g.p, v)
}

// heartbeat writes the time now (CLOCK_MONOTONIC, nanoseconds).
func (g *generation) heartbeat() {
	if g == nil || g.beat == nil {
		return
	}
	atomic.StoreInt64(g.beat, monoNow())
}

// beats keeps the heartbeat going for as long as lockd lives: before
// each, events inotify has and lockd has not read yet change the
// generation.
func (s *server) beats() {
	for {
		s.watch.pending()
		s.gen.heartbeat()
		time.Sleep(beatEvery)
	}
}
