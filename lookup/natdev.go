package lookup

import (
	"os"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/child"
)

// openNatDev takes the NAT device master passed on child.NatDevFD in the
// modes that ask one (pf, ipfilter). A missing descriptor is logged; the
// look-ups then fail with a clear error.
func (s *server) openNatDev() {
	if s.env.Cfg.Mode.NATDevice() == "" {
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(child.NatDevFD, &st); err != nil {
		s.env.Log.Errf("mode %v: no NAT device from master on descriptor %d: %v", s.env.Cfg.Mode, child.NatDevFD, err)
		return
	}
	unix.CloseOnExec(child.NatDevFD)
	s.natDev = os.NewFile(child.NatDevFD, "natdev")
}
