//go:build !linux && !freebsd && !openbsd && !netbsd && !dragonfly && !darwin

package scanner

import "errors"

// loadAvg is not known on this system: spam_max_load cannot apply.
func loadAvg() (float64, error) {
	return 0, errors.New("load average unknown on this system")
}
