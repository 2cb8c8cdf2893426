// Package version names this build of smtp-gated and what it supports.
package version

import "smtp-gated/internal/config"

// Version of smtp-gated. The 1.4 series is the C original whose manual
// and configuration files this one follows.
var Version = "1.5.0"

// Modes lists the modes this build supports on this system, in the order
// of the manual.
func Modes() []config.Mode { return modes }

// Supported reports whether m works in this build.
func Supported(m config.Mode) bool {
	for _, x := range modes {
		if x == m {
			return true
		}
	}
	return false
}
