package version

import "smtp-gated/internal/config"

var modes = []config.Mode{config.ModeFixed, config.ModeFixedXclient, config.ModeRemote, config.ModeRemoteUDP,
	config.ModeGetsockname, config.ModeIpfw, config.ModeIpfilter, config.ModePf}
