//go:build !openbsd && !freebsd

package confine

import "smtp-gated/internal/config"

// apply does nothing here: a Linux child's confinement is its chroot, its
// user, no new privileges and no capabilities (internal/priv).
func apply(*Rule, *config.Config, map[string]string) (string, error) { return "", nil }
