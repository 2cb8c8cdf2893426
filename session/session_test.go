package session

import "testing"

func TestMaxProcs(t *testing.T) {
	for _, tc := range []struct {
		cpus    int
		workers uint64
		want    int
	}{
		{2, 0, 1}, // one worker per CPU, the default
		{8, 0, 1},
		{8, 8, 1},
		{8, 2, 4},
		{8, 3, 2},
		{2, 4, 1}, // more workers than CPUs
		{1, 1, 1},
	} {
		if got := maxProcs(tc.cpus, tc.workers); got != tc.want {
			t.Errorf("maxProcs(%d CPUs, session_workers %d) = %d, want %d", tc.cpus, tc.workers, got, tc.want)
		}
	}
}
