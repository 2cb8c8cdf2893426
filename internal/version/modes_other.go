//go:build !linux && !freebsd && !openbsd

package version

import "smtp-gated/internal/config"

var modes = []config.Mode{config.ModeFixed, config.ModeFixedXclient, config.ModeRemote, config.ModeRemoteUDP,
	config.ModeGetsockname}
