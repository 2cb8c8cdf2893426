//go:build !linux

package session

import (
	"errors"
	"os"
)

// mapGeneration: lockd sends no generation page but on Linux.
func mapGeneration(*os.File, int) (*uint64, *int64, error) {
	return nil, nil, errors.New("no generation page on this system")
}

func monoNow() int64 { return 0 }
