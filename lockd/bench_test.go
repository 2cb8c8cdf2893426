package lockd

import (
	"testing"

	"smtp-gated/ipc"
)

// BenchmarkPolicy measures lockd's work for one request, without the IPC:
//
//	go test -run '^$' -bench Policy ./lockd/
func BenchmarkPolicy(b *testing.B) {
	b.Run("lock", func(b *testing.B) {
		s, _ := testServer(b, "lock_on virus")
		for b.Loop() {
			if a := s.policy(&ipc.Policy{Client: cli4, Lock: true}); a.Err != "" || a.Locked {
				b.Fatal(a)
			}
		}
	})
	b.Run("lock+rate", func(b *testing.B) {
		s, _ := testServer(b, "lock_on virus", "ratelimit_period 3600", "ratelimit_connections 0")
		for b.Loop() {
			if a := s.policy(&ipc.Policy{Client: cli4, Lock: true, Take: []string{ipc.RateConnections}}); a.Err != "" || a.Locked {
				b.Fatal(a)
			}
		}
	})
}

// BenchmarkCheckPolicy measures the check of a worker's request against
// master's record of its session (trust.go), which comes before policy.
func BenchmarkCheckPolicy(b *testing.B) {
	s, _ := testServer(b, "ratelimit_period 3600", "size_limit 10000000")
	s.sess.open(&ipc.SessionOpen{ID: 7, Worker: 1, Client: cli4, Ident: "alice"})
	q := &ipc.Policy{ID: 7, Client: cli4, Ident: "alice", Take: []string{ipc.RateMessages},
		Add: []ipc.Delta{{Name: ipc.RateBytes, N: 5000}, {Name: ipc.RateRcpttoRejects, N: 1}}}
	for b.Loop() {
		if _, err := s.checkPolicy(1, q); err != nil {
			b.Fatal(err)
		}
	}
}
