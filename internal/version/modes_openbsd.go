package version

import "smtp-gated/internal/config"

// OpenBSD: pf's rdr-to through DIOCNATLOOK, and divert-to through
// getsockname (the packet keeps its destination).
var modes = []config.Mode{config.ModeFixed, config.ModeFixedXclient, config.ModeRemote, config.ModeRemoteUDP,
	config.ModeGetsockname, config.ModePf}
