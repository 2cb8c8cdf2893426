package version

import "smtp-gated/internal/config"

var modes = []config.Mode{config.ModeFixed, config.ModeFixedXclient, config.ModeGetsockname, config.ModeNetfilter}
