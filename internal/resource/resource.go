// Package resource applies the resource control options of
// smtp-gated.conf(5) to the calling process: the limit_* resource limits
// and the scheduling priority.
//
// Two limits need care in a Go program. The runtime reserves about 1.5 GiB
// of address space when it starts, and with its threads' stacks uses well
// over 100 MiB of data segment before it serves anything: an RLIMIT_AS or
// RLIMIT_DATA of the manual's default 64M would make it fail its next
// allocation, at a time nobody chose. Values below a floor (AddressFloor,
// DataFloor) are therefore not applied to the daemon's own processes; they
// are applied to the action script instead (Script), which is what the
// original's "limits are inherited by action scripts" was mostly for.
package resource

import (
	"fmt"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"

	"smtp-gated/internal/config"
)

// The smallest limit_virt_size and limit_data_size applied to the daemon's
// own processes.
const (
	AddressFloor = 4 << 30
	DataFloor    = 1 << 30
)

// limit is one limit_* option.
type limit struct {
	name     string // the option
	resource int    // RLIMIT_*; -1 when the system has none
	value    int64  // the option's value
	dflt     int64  // the option's default
	floor    int64
	off      int64 // values up to this leave the system's limit alone
	set      int64 // the limit set for value
}

// Note is something Apply could not or would not apply. Default tells
// that the option has its default value: the administrator did not ask
// for it, so it is not worth a warning.
type Note struct {
	Msg     string
	Default bool
}

// limits are the limit_* options as smtp-gated 1.4 applied them:
// limit_core_size when 0 or more; limit_virt_size and limit_data_size
// when more than 0; limit_fsize when 0 or more, as 8192 bytes more than
// the largest of itself and the spool's largest file (the larger of
// scan_max_size and spam_max_size), so that a spool file is never cut
// short by it.
func limits(cfg *config.Config) []limit {
	d := config.Default()
	return []limit{
		{"limit_core_size", rlimitCore, cfg.LimitCoreSize, d.LimitCoreSize, 0, -1, cfg.LimitCoreSize},
		{"limit_virt_size", rlimitAS, cfg.LimitVirtSize, d.LimitVirtSize, AddressFloor, 0, cfg.LimitVirtSize},
		{"limit_data_size", rlimitData, cfg.LimitDataSize, d.LimitDataSize, DataFloor, 0, cfg.LimitDataSize},
		{"limit_fsize", rlimitFsize, cfg.LimitFsize, d.LimitFsize, 0, -1, FileSize(cfg)},
	}
}

// FileSize is the RLIMIT_FSIZE that limit_fsize sets (when 0 or more):
// 8192 + max(limit_fsize, scan_max_size, spam_max_size).
func FileSize(cfg *config.Config) int64 {
	n := max(cfg.LimitFsize, 0)
	spool := max(cfg.ScanMaxSize, cfg.SpamMaxSize)
	if spool > uint64(n) {
		n = int64(min(spool, 1<<62))
	}
	return 8192 + n
}

// Apply sets cfg's resource limits and priority on the calling process.
// What it could not or would not apply comes back as notes for the log;
// none of them is fatal (the manual: "process does not terminate, logging
// error instead").
//
// SIGXFSZ is ignored, so that a write over limit_fsize fails with EFBIG
// (a spool error, answered 451) instead of killing the process.
func Apply(cfg *config.Config) (notes []Note) {
	signal.Ignore(syscall.SIGXFSZ)
	for _, l := range limits(cfg) {
		if l.value <= l.off {
			continue // the system's limit stays
		}
		if l.resource < 0 {
			notes = append(notes, Note{fmt.Sprintf("%s %d: not applied, this system has no such limit", l.name, l.value), l.value == l.dflt})
			continue
		}
		if l.set < l.floor {
			notes = append(notes, Note{fmt.Sprintf("%s %d: not applied to the daemon (below %d, the Go runtime would fail); applied to action_script only",
				l.name, l.value, l.floor), l.value == l.dflt})
			continue
		}
		if err := setLimit(l.resource, uint64(l.set)); err != nil {
			notes = append(notes, Note{Msg: fmt.Sprintf("%s %d: %v", l.name, l.value, err)})
		}
	}
	if cfg.Priority != 0 {
		if err := setPriority(int(cfg.Priority)); err != nil {
			notes = append(notes, Note{Msg: fmt.Sprintf("priority %d: %v", cfg.Priority, err)})
		}
	}
	return notes
}

// setLimit makes v the soft limit of resource, raising the hard limit
// when it is lower (which needs privilege; without it the soft limit is
// set to the hard one and the shortfall reported).
func setLimit(resource int, v uint64) error {
	_, hard, err := getrlimit(resource)
	if err != nil {
		return err
	}
	max := hard
	if v > hard {
		max = v
	}
	err = setrlimit(resource, v, max)
	if err != nil && v > hard {
		if err2 := setrlimit(resource, hard, hard); err2 == nil {
			return fmt.Errorf("above the hard limit %d, which cannot be raised (%v): set to %d", hard, err, hard)
		}
	}
	return err
}

// Script returns the command that runs an action script (path, args)
// under the limits that Apply leaves out for the daemon: limit_virt_size
// and limit_data_size below their floors are set by /bin/sh's ulimit
// before the script replaces the shell. When there is nothing to add it
// is a plain exec.Command.
func Script(cfg *config.Config, path string, args ...string) *exec.Cmd {
	var pre string
	for _, l := range limits(cfg) {
		if l.value <= l.off || l.set >= l.floor || l.resource < 0 || l.floor == 0 {
			continue
		}
		flag := "-v"
		if l.resource == rlimitData {
			flag = "-d"
		}
		kib := (l.set + 1023) / 1024
		pre += "ulimit " + flag + " " + strconv.FormatInt(kib, 10) + " && "
	}
	if pre == "" {
		return exec.Command(path, args...)
	}
	// $0 is the script, "$@" its arguments: nothing of them is parsed by
	// the shell.
	return exec.Command("/bin/sh", append([]string{"-c", pre + `exec "$0" "$@"`, path}, args...)...)
}
