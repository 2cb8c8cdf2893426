// Package confine is the BSDs' own confinement of the child processes,
// applied by each role once its start-up is over: on OpenBSD pledge(2)
// with the role's promises and unveil(2) of exactly the paths it uses,
// then locked; on FreeBSD Capsicum's cap_enter(2) for a role that can
// work from the descriptors it holds. Elsewhere it does nothing (Linux
// children have no new privileges and no capabilities: internal/priv).
//
// Rules is the one table of what each role keeps; smtp-gated(8) lists it
// under SECURITY CONSIDERATIONS, and a test checks that the two agree.
package confine

import (
	"fmt"
	"strings"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// Path is one path a role unveils.
type Path struct {
	// Name is the configuration option that names the path, TMPDIR, or
	// an absolute path. The role says where each is (Apply's paths); one
	// it does not give (not in use) is not unveiled.
	Name string
	// Perm is unveil(2)'s permissions: r, w, x, c.
	Perm string
}

func (p Path) String() string { return p.Name + " " + p.Perm }

// Rule is one role's confinement after its start-up.
type Rule struct {
	Role string
	// Pledge is the OpenBSD promises. Programs the role executes are
	// not pledged (no execpromises).
	Pledge string
	// Unveil is every path left visible; none is unveil(NULL, NULL)
	// alone: nothing at all.
	Unveil []Path
	// Capsicum says when FreeBSD's capability mode applies: "never", or
	// the condition under which the role needs no new socket or file.
	Capsicum string
	// capsicum decides it for a configuration.
	capsicum func(cfg *config.Config) bool
}

// Rules is the table, one entry per child role. Master is not confined:
// it keeps root to start its children again and to open what needs root.
var Rules = []Rule{
	{
		// Spool files are made, written, chmodded, read again and
		// removed in the root (spool_path); clients' connections come
		// from master, the MTA is connected to, spool files go to the
		// scanner as descriptors.
		Role:     ipc.RoleSession,
		Pledge:   "stdio rpath wpath cpath fattr inet recvfd sendfd",
		Unveil:   []Path{{"spool_path", "rwc"}},
		Capsicum: "never",
	},
	{
		// Chrooted into an empty directory: it reads nothing. Sockets
		// for the remote helpers and name servers; pf's state table
		// (DIOCNATLOOK) through /dev/pf opened by master; the
		// interface addresses (route) for loop detection.
		Role:     ipc.RoleLookup,
		Pledge:   "stdio inet dns route pf recvfd",
		Capsicum: "when mode is neither remote nor remote-udp, and dnsbl and spf are off",
		capsicum: func(cfg *config.Config) bool {
			return !cfg.Mode.Remote() &&
				cfg.Dnsbl == "" && cfg.Spf == config.SPFOff
		},
	},
	{
		// clamd, spamd and mksd over unix sockets or TCP; spool files
		// come as descriptors and go to clamd as descriptors; mksd's
		// copies in a private directory under TMPDIR.
		Role:   ipc.RoleScanner,
		Pledge: "stdio rpath wpath cpath fattr inet unix dns recvfd sendfd",
		Unveil: []Path{
			{"antivirus_path", "rw"}, {"antispam_path", "rw"}, {"TMPDIR", "rwc"},
			{"/etc/hosts", "r"}, {"/etc/resolv.conf", "r"},
		},
		Capsicum: "never",
	},
	{
		// Lock and rate files by name; action_script executed, with its
		// interpreter wherever it is (x on /: executable, not readable).
		Role:   ipc.RoleLockd,
		Pledge: "stdio rpath wpath cpath fattr proc exec",
		Unveil: []Path{
			{"lock_path", "rwc"}, {"ratelimit_path", "rwc"},
			{"action_script", "rx"}, {"/", "x"}, {"/dev/null", "rw"},
		},
		Capsicum: "never",
	},
}

// For returns role's rule.
func For(role string) (*Rule, error) {
	for i := range Rules {
		if Rules[i].Role == role {
			return &Rules[i], nil
		}
	}
	return nil, fmt.Errorf("confine: no rule for role %q", role)
}

// UnveilList is the rule's paths as smtp-gated(8) lists them.
func (r *Rule) UnveilList() string {
	if len(r.Unveil) == 0 {
		return "none"
	}
	var s []string
	for _, p := range r.Unveil {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// CapabilityMode reports whether cap_enter applies to the role with cfg.
func (r *Rule) CapabilityMode(cfg *config.Config) bool {
	return r.capsicum != nil && r.capsicum(cfg)
}

// Apply confines the calling process as role: paths says where each of
// the rule's Unveil names is, as the process sees it (after its chroot);
// a name it lacks, or gives as "", is not unveiled. It returns what it
// did, for the log, or why it could not.
func Apply(role string, cfg *config.Config, paths map[string]string) (string, error) {
	r, err := For(role)
	if err != nil {
		return "", err
	}
	return apply(r, cfg, paths)
}

// applied is what apply did in this process.
var applied struct {
	rule     *Rule
	unveiled map[string]string // name → path, on OpenBSD
	capMode  bool              // in capability mode, on FreeBSD
}

// Fits reports why a new configuration (on reload) cannot be served under
// the confinement this process is in: a path it unveiled has changed, or
// capability mode is on and the role now needs new sockets. The role then
// exits, and master starts it again, confined for the new configuration.
func Fits(cfg *config.Config, paths map[string]string) error {
	r := applied.rule
	if r == nil {
		return nil
	}
	if applied.capMode && !r.CapabilityMode(cfg) {
		return fmt.Errorf("in capability mode, and the new configuration needs new sockets (%s)", r.Capsicum)
	}
	if applied.unveiled != nil {
		for _, p := range r.Unveil {
			if paths[p.Name] != applied.unveiled[p.Name] {
				return fmt.Errorf("%s changed from %q to %q, and unveil is locked", p.Name, applied.unveiled[p.Name], paths[p.Name])
			}
		}
	}
	return nil
}
