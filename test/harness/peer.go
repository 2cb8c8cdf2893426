package harness

import (
	"sync"
	"testing"
)

// sharedPeer is a peer server that a test binary starts once, on first
// use, and shares between its tests; Main's teardown stops it.
type sharedPeer[S any] struct {
	mu      sync.Mutex
	srv     S
	started bool
	err     error // why the first start failed: later callers fail too
}

// get returns the shared server, starting it with start on first use.
// name is the peer's name in messages; describe tells where the started
// server listens, for the log.
func (p *sharedPeer[S]) get(t testing.TB, name string, start func() (S, error), describe func(S) string) S {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return p.srv
	}
	if p.err != nil {
		t.Fatalf("the shared %s failed to start earlier in this test binary: %v", name, p.err)
	}
	srv, err := start()
	if err != nil {
		p.err = err
		t.Fatalf("start %s: %v", name, err)
	}
	t.Logf("harness: shared %s %s", name, describe(srv))
	p.srv, p.started = srv, true
	return srv
}

// newPeer starts a private server for t only, stopped by t.Cleanup.
func newPeer[S any](t testing.TB, name string, start func() (S, error), stop func(S) error) S {
	t.Helper()
	srv, err := start()
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := stop(srv); err != nil {
			t.Errorf("stop %s: %v", name, err)
		}
	})
	return srv
}
