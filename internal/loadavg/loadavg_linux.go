package loadavg

import "golang.org/x/sys/unix"

// Get returns the 1-minute load average.
func Get() (float64, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, err
	}
	return float64(si.Loads[0]) / (1 << unix.SI_LOAD_SHIFT), nil
}
