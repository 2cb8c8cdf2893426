// Package harness runs the real peers and the real daemon for the end-to-end
// tests under test/: a private Postfix (test/peers/postfix.sh), the
// smtp-gated binary built from this module, and a small SMTP client.
//
// A test package that uses Postfix or StartDaemon calls Main from TestMain:
//
//	func TestMain(m *testing.M) { harness.Main(m) }
//
// Main runs the tests, then stops everything the harness started for the
// test binary (the shared Postfix, daemons still alive, temporary
// directories), also when the binary is interrupted with SIGINT or SIGTERM.
// A Postfix left behind by a test binary that was killed outright (a
// `go test -timeout` panic) is stopped by the next test binary that starts one.
//
// The shared, start-once state of a test binary (the Postfix, the daemon
// binary) lives in package variables: there is one per process by nature.
package harness

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// EnvRequirePeers, set to "1", turns "peer not available" skips into failures
// (CI sets it so that a missing package cannot pass as a green run).
const EnvRequirePeers = "SMTPGATED_REQUIRE_PEERS"

var (
	mainActive atomic.Bool

	teardownMu   sync.Mutex
	teardowns    []func() // run in reverse order by runTeardowns
	closing      bool     // runTeardowns has begun
	teardownOnce sync.Once
)

// Main runs the tests of the package (m.Run), then stops every process and
// removes every directory the harness started or made for this test binary,
// and exits with the tests' status. Call it from TestMain.
func Main(m *testing.M) {
	mainActive.Store(true)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "harness: %v: stopping the peers and daemons started by the tests\n", s)
		runTeardowns()
		os.Exit(2)
	}()
	code := m.Run()
	signal.Stop(sigs)
	runTeardowns()
	os.Exit(code)
}

// errClosing refuses starts once the teardown has begun.
var errClosing = errors.New("harness: the test binary is shutting down (teardown in progress)")

// atTeardown registers f to run when Main finishes (or the binary is
// interrupted), after the tests. f must be safe to call after the thing it
// stops was already stopped. Once the teardown has begun, f runs at once.
func atTeardown(f func()) {
	teardownMu.Lock()
	if closing {
		teardownMu.Unlock()
		f()
		return
	}
	teardowns = append(teardowns, f)
	teardownMu.Unlock()
}

// beginStart registers stop as the teardown of something about to start (a
// process that may outlive the test binary). The caller starts it, then calls
// done, successful or not; the teardown waits for done before calling stop,
// so a SIGINT during a start still stops what it starts. Once the teardown
// has begun, nothing new may start: beginStart returns errClosing.
func beginStart(stop func()) (done func(), err error) {
	teardownMu.Lock()
	defer teardownMu.Unlock()
	if closing {
		return nil, errClosing
	}
	started := make(chan struct{})
	teardowns = append(teardowns, func() {
		<-started
		stop()
	})
	var once sync.Once
	return func() { once.Do(func() { close(started) }) }, nil
}

// runTeardowns runs the teardowns once; a second caller (Main's end racing
// with the signal handler) waits until the first has finished, so that the
// process does not exit in the middle of a stop.
func runTeardowns() { teardownOnce.Do(teardown) }

func teardown() {
	teardownMu.Lock()
	closing = true
	fs := teardowns
	teardowns = nil
	teardownMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func requireMain(t testing.TB, what string) {
	t.Helper()
	if !mainActive.Load() {
		t.Fatalf("harness.%s needs the test package to call harness.Main from TestMain:\n\tfunc TestMain(m *testing.M) { harness.Main(m) }", what)
	}
}

// requirePeers returns true when the test must fail (not skip) on a missing peer.
func requirePeers() bool { return os.Getenv(EnvRequirePeers) == "1" }

// skipOrFail skips the test with reason, or fails it when EnvRequirePeers=1.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if requirePeers() {
		t.Fatalf("%s (and %s=1)", reason, EnvRequirePeers)
	}
	t.Skipf("%s (set %s=1 to fail instead of skipping)", reason, EnvRequirePeers)
}
