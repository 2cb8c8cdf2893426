// Package version names this build of smtp-gated and what it supports.
package version

import (
	"os"
	"runtime/debug"
	"time"

	"smtp-gated/internal/config"
)

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

// BuildDate is when the source was committed (UTC), or when the binary
// without version control information was written (local time), in the
// layout of C's __DATE__ __TIME__: "Dec  2 2026 13:42:32".
func BuildDate() string {
	const layout = "Jan _2 2006 15:04:05"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.time" {
				if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
					return t.UTC().Format(layout)
				}
			}
		}
	}
	if p, err := os.Executable(); err == nil {
		if fi, err := os.Stat(p); err == nil {
			return fi.ModTime().Format(layout)
		}
	}
	return "unknown"
}
