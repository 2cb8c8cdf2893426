//go:build freebsd

package confine

import (
	"fmt"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
)

// apply enters capability mode when the rule says the role can work from
// its descriptors alone with cfg.
func apply(r *Rule, cfg *config.Config, _ map[string]string) (string, error) {
	if !r.CapabilityMode(cfg) {
		return "not in capability mode: the role opens sockets or files by name", nil
	}
	if err := unix.CapEnter(); err != nil {
		return "", fmt.Errorf("cap_enter: %w", err)
	}
	applied.rule, applied.capMode = r, true
	return "in capability mode (cap_enter)", nil
}
