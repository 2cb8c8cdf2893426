package lockd

import (
	"net/netip"
	"sync"
)

// keyLocks serialises everything lockd does about one client address: its
// lock files and its rate-limit files are read, changed and written by one
// request at a time, whichever session worker (or master) asked, while
// requests about other addresses go on in parallel. An ident's files are
// under its address's key, so that the address's lock and the ident's are
// looked at together.
type keyLocks struct {
	mu sync.Mutex
	m  map[netip.Addr]*keyLock
}

type keyLock struct {
	sync.Mutex
	refs int // holders and waiters; the entry goes when none is left
}

// lock takes the key of address a and returns the function that gives it
// back.
func (k *keyLocks) lock(a netip.Addr) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[netip.Addr]*keyLock)
	}
	l := k.m[a]
	if l == nil {
		l = &keyLock{}
		k.m[a] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.m, a)
		}
		k.mu.Unlock()
	}
}
