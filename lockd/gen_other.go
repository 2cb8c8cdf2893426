//go:build !linux

package lockd

import (
	"errors"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
)

// newGeneration: there is no sealed shared page but on Linux. The workers
// get none and ask lockd every time.
func newGeneration() (*generation, error) {
	return nil, errors.New("no generation page on this system")
}

// lockWatch: without inotify lockd cannot see an administrator's lock
// file come, so nothing is kept.
type lockWatch struct{}

func newLockWatch(*generation, *logx.Logger) *lockWatch { return nil }

func (w *lockWatch) watch(*config.Config) {}

func (w *lockWatch) pending() {}

func monoNow() int64 { return 0 }
