package session

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"smtp-gated/ipc"
)

// genPage is a generation page as lockd makes it (lockd/gen_linux.go):
// the test writes it through its own mapping, made before the seals.
type genPage struct {
	fd   int
	gen  *uint64
	beat *int64
}

// set writes generation v and a heartbeat of ago.
func (g *genPage) set(v uint64, ago time.Duration) {
	atomic.StoreUint64(g.gen, v)
	atomic.StoreInt64(g.beat, monoNow()-int64(ago))
}

func newGenPage(t *testing.T, seals int) *genPage {
	t.Helper()
	fd, err := unix.MemfdCreate("test-generation", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, 4096); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem); unix.Close(fd) })
	return &genPage{fd: fd, gen: (*uint64)(unsafe.Pointer(&mem[0])), beat: (*int64)(unsafe.Pointer(&mem[8]))}
}

const lockdSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL

// sendPage gives w the page over f's link, and waits until w took it.
func sendPage(t *testing.T, w *worker, f *fakeLockd, g *genPage) {
	t.Helper()
	if err := f.peer.Send(ipc.MsgPolicyGen, &ipc.PolicyGen{Size: 4096}, g.fd); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.lockCache.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not take the generation page")
		}
		time.Sleep(time.Millisecond)
	}
	// A heartbeat is fresh for a minute here, whatever the machine's load.
	w.lockCache.Load().fresh = time.Minute
}

// policies counts the Policy requests lockd got.
func (f *fakeLockd) policies() int {
	n := 0
	for _, v := range f.requests() {
		if _, ok := v.(*ipc.Policy); ok {
			n++
		}
	}
	return n
}

// A "not locked" answer is kept while lockd's generation stays the same:
// the next sessions and messages of the client cost lockd nothing. A new
// generation, a page saying 0, a heartbeat too old, a locked client, a
// question that counts, and a link that ended all go to lockd again.
func TestLockCache(t *testing.T) {
	cfg := policyConfig(t, "lock_on virus", "msg_virus_locked locked out", "msg_temp_unavail later")
	w := testWorker()
	var locked atomic.Bool
	f := linkFake(t, w, func(v any) (ipc.Type, any) {
		return ipc.MsgPolicyAnswer, &ipc.PolicyAnswer{Locked: locked.Load(), Cause: "virus"}
	})
	g := newGenPage(t, lockdSeals)
	g.set(7, 0)
	sendPage(t, w, f, g)
	admit := func(want bool) {
		t.Helper()
		c, r := policyConn(t, w, cfg)
		done := make(chan bool, 1)
		go func() { done <- w.admitSession(c) }()
		if !want {
			if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "554 ") {
				t.Errorf("refused with %q, want 554", line)
			}
			c.client.Close()
		}
		if got := <-done; got != want {
			t.Fatalf("admitSession = %v, want %v", got, want)
		}
	}
	asked := func(want int, what string) {
		t.Helper()
		if n := f.policies(); n != want {
			t.Fatalf("%s: lockd asked %d times, want %d", what, n, want)
		}
	}
	before := func(client netip.AddrPort) {
		t.Helper()
		if a, err := w.askLockd(t.Context(), &ipc.Policy{ID: 3, Client: client, Lock: true}); err != nil || a.Locked {
			t.Fatalf("before the dot: %+v, %v", a, err)
		}
	}
	src := netip.MustParseAddrPort("192.0.2.7:40000")
	admit(true)
	asked(1, "first session")
	admit(true)
	before(src)
	before(netip.MustParseAddrPort("192.0.2.7:40001")) // another port, the same client
	asked(1, "the same client again, same generation")
	before(netip.MustParseAddrPort("192.0.2.8:40000"))
	asked(2, "another client")

	// lockd changed something: asked again, and kept again.
	g.set(8, 0)
	admit(true)
	admit(true)
	asked(3, "new generation")

	// Locked: refused, and asked every time.
	locked.Store(true)
	g.set(9, 0)
	admit(false)
	admit(false)
	asked(5, "locked client")
	locked.Store(false)

	// 0: nothing kept.
	g.set(0, 0)
	admit(true)
	admit(true)
	asked(7, "page says 0")

	// lockd has not written its heartbeat for longer than it may: it
	// may have missed a change; or the heartbeat is from a clock it
	// cannot be from.
	g.set(10, 0)
	admit(true)
	asked(8, "generation 10")
	g.set(10, 2*time.Minute)
	admit(true)
	admit(true)
	asked(10, "heartbeat too old")
	g.set(10, -2*time.Minute)
	admit(true)
	asked(11, "heartbeat in the future")
	g.set(10, 0)
	admit(true)
	asked(11, "heartbeat fresh again")

	// What counts a rate limit goes to lockd every time.
	rated := policyConfig(t, "lock_on virus", "ratelimit_period 60")
	for range 2 {
		c, _ := policyConn(t, w, rated)
		if !w.admitSession(c) {
			t.Fatal("refused with rate limits on")
		}
	}
	asked(13, "rate limits on")

	// The link ended: what lockd said on it no longer counts.
	admit(true)
	asked(13, "before the link ends")
	w.lockd.Load().Close()
	c, r := policyConn(t, w, cfg)
	done := make(chan bool, 1)
	go func() { done <- w.admitSession(c) }()
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "421 ") {
		t.Errorf("lockd gone: %q, want 421", line)
	}
	c.client.Close()
	if <-done {
		t.Error("admitted from what a link that ended said")
	}
}

// A page that is not sealed against shrinking and writing is refused:
// the link is dropped, and nothing is kept.
func TestLockCacheBadPage(t *testing.T) {
	w := testWorker()
	f := linkFake(t, w, func(v any) (ipc.Type, any) { return ipc.MsgPolicyAnswer, &ipc.PolicyAnswer{} })
	g := newGenPage(t, unix.F_SEAL_GROW)
	if err := f.peer.Send(ipc.MsgPolicyGen, &ipc.PolicyGen{Size: 4096}, g.fd); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !w.lockd.Load().Ended() {
		if time.Now().After(deadline) {
			t.Fatal("the link lives on after an unsealed page")
		}
		time.Sleep(time.Millisecond)
	}
	if w.lockCache.Load() != nil {
		t.Error("an unsealed page was taken")
	}
}
