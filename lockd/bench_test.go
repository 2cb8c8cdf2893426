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
