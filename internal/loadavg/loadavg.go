// Package loadavg reads the system's 1-minute load average, for max_load
// (master) and the like.
package loadavg

import (
	"encoding/binary"
	"fmt"
)

// parse reads the BSDs' sysctl vm.loadavg, a struct loadavg: three
// fixpt_t (uint32) load averages, then a long fscale, in host byte order
// (24 bytes on 64-bit systems, 16 on 32-bit ones). It returns the
// 1-minute load average.
func parse(b []byte) (float64, error) {
	var fscale uint64
	switch len(b) {
	case 24:
		fscale = binary.NativeEndian.Uint64(b[16:])
	case 16:
		fscale = uint64(binary.NativeEndian.Uint32(b[12:]))
	default:
		return 0, fmt.Errorf("vm.loadavg: %d bytes, want 16 or 24", len(b))
	}
	if fscale == 0 {
		return 0, fmt.Errorf("vm.loadavg: fscale is 0")
	}
	return float64(binary.NativeEndian.Uint32(b)) / float64(fscale), nil
}
