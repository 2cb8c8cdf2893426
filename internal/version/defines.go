package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Define is one line of the Defines: block of smtp-gated -V: a
// compile-time option of 1.4, with what this build has in its place.
type Define struct {
	Name, Value string
}

// Defines lists 1.4's compile-time options in 1.4's order, each with this
// build's truth: "yes"/"no" for features, a number for sizes.
//
//   - USE_NAT: "yes (frameworks)" with the NAT frameworks of Modes
//     (netfilter, tproxy, ipfw, ipfilter, pf), "no" without any.
//   - USE_SHARED_MEM: yes: max_per_ident counts sessions across the
//     session workers (1.4 needed shared memory for that).
//   - USE_SPF: the SPF library and its version; USE_REGEX: Go's regexp
//     (RE2 syntax, not PCRE) and the Go version.
//   - SCANNER_MKSD yes, SCANNER_LIBDSPAM no, FILTER_CHUNKING yes (CHUNKING
//     and BINARYMIME are hidden from clients), SILENT_ECONNRESET no.
//   - CONN_REJ_CODE 554 (connections refused by a limit), HELO_LENGTH 0
//     (the HELO name is not cut), IDENT_SIZE 20, PIPELINE_SIZE_MIN 16,
//     SLOT_HASH_THRESHOLD 0 (the session tables are always hashed),
//     HAVE_MMAP no.
func Defines() []Define {
	var nat []string
	for _, m := range Modes() {
		if m.KernelNAT() {
			nat = append(nat, m.String())
		}
	}
	useNat := "no"
	if len(nat) > 0 {
		useNat = "yes (" + strings.Join(nat, " ") + ")"
	}
	return []Define{
		{"USE_NAT", useNat},
		{"USE_SHARED_MEM", "yes"},
		{"USE_SPF", module("blitiri.com.ar/go/spf")},
		{"USE_REGEX", "go regexp " + runtime.Version()},
		{"SCANNER_MKSD", "yes"},
		{"SCANNER_LIBDSPAM", "no"},
		{"FILTER_CHUNKING", "yes"},
		{"SILENT_ECONNRESET", "no"},
		{"CONN_REJ_CODE", "554"},
		{"HELO_LENGTH", "0"},
		{"IDENT_SIZE", "20"},
		{"PIPELINE_SIZE_MIN", "16"},
		{"SLOT_HASH_THRESHOLD", "0"},
		{"HAVE_MMAP", "no"},
	}
}

// module is "path version" of a module built in, or "yes (path)" when the
// binary carries no module information.
func module(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Path + " " + d.Version
			}
		}
	}
	return "yes (" + path + ")"
}
