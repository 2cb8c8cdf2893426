//go:build !linux && !freebsd && !openbsd && !netbsd && !dragonfly && !darwin

package loadavg

import "errors"

// Get fails: the load average is not known on this system.
func Get() (float64, error) {
	return 0, errors.New("load average unknown on this system")
}
