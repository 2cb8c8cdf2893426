package session

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"smtp-gated/ipc"
)

// A worker keeps lockd's "not locked" answers, so that a session and a
// message of a client lockd found unlocked do not each cost a round trip
// to lockd. An answer is kept under lockd's generation, read from the page
// lockd shares with the workers before the question was asked, and used
// only while the page says the same: lockd changes it before it
// acknowledges a lock, a reload, or any change in lock_path it sees
// (lockd/gen.go says when, and what that bounds). The worker never writes
// the page (it is sealed against writing): a worker could skip lockd
// altogether anyway, the cache gives it nothing it did not have.
//
// Nothing else is kept: a locked client is asked about every time (its
// lock may expire), and so is every question that counts or checks a
// rate limit, which lockd must count one by one.

// maxLockCache bounds the clients kept; the cache starts anew beyond.
const maxLockCache = 16384

// freshFor is how old lockd's heartbeat on the page may be: a lockd that
// has not written it for that long (stopped, starved) may have missed a
// change it cannot tell the workers of, and nothing kept is used until it
// writes again. It bounds how long an administrator's lock file can go
// unnoticed (lockd/gen.go).
const freshFor = time.Second

// lockKey is whom a lock answer is about: lock files are named by the
// address, and by the address and ident.
type lockKey struct {
	addr  netip.Addr
	ident string
}

// lockCache is what one worker keeps of one link to lockd.
type lockCache struct {
	peer *ipc.Peer // the link the page came over: the cache dies with it
	gen  *uint64   // lockd's generation, in a read-only mapping
	beat *int64    // lockd's heartbeat, on the same page
	// fresh is freshFor (a test's own in tests).
	fresh time.Duration

	mu    sync.Mutex
	at    uint64 // the generation of the answers in clear
	clear map[lockKey]struct{}
}

// generation is lockd's generation now; 0: keep nothing, use nothing
// kept (lockd said so, or its heartbeat is too old).
func (lc *lockCache) generation() uint64 {
	g := atomic.LoadUint64(lc.gen)
	if age := monoNow() - atomic.LoadInt64(lc.beat); age < 0 || age > int64(lc.fresh) {
		return 0
	}
	return g
}

// unlocked reports whether k was found unlocked under generation g.
func (lc *lockCache) unlocked(k lockKey, g uint64) bool {
	if g == 0 {
		return false
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.at != g {
		return false
	}
	_, ok := lc.clear[k]
	return ok
}

// keep records that lockd found k unlocked, having been asked under
// generation g; nothing is kept if the generation moved since.
func (lc *lockCache) keep(k lockKey, g uint64) {
	if g == 0 || lc.generation() != g {
		return
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.at != g || len(lc.clear) >= maxLockCache {
		lc.at, lc.clear = g, make(map[lockKey]struct{})
	}
	lc.clear[k] = struct{}{}
}

// lockCacheFor is the cache that may answer for link lp, nil when none
// may: lockd sent no page over it, or the link is gone (what lockd knew
// when it lived says nothing of its successor).
func (w *worker) lockCacheFor(lp *ipc.Peer) *lockCache {
	lc := w.lockCache.Load()
	if lc == nil || lc.peer != lp || lp.Ended() {
		return nil
	}
	return lc
}

// fromLockd receives what lockd sends other than replies: its generation
// page, once per link. Anything else, or a page that cannot be mapped,
// drops the link, as for the other services.
func (w *worker) fromLockd(p *ipc.Peer, m *ipc.Msg) {
	v, ok := m.Payload.(*ipc.PolicyGen)
	if !ok {
		w.fromService(p, m)
		return
	}
	f := m.TakeFile(0)
	defer f.Close()
	gen, beat, err := mapGeneration(f, v.Size)
	if err != nil {
		w.log.Errf("generation page from %s: %v: closing the link", p.Name, err)
		p.Close()
		return
	}
	w.lockCache.Store(&lockCache{peer: p, gen: gen, beat: beat, fresh: freshFor})
	w.log.Debugf("generation page from %s mapped: its \"not locked\" answers are kept", p.Name)
}
