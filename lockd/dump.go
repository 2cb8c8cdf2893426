package lockd

import (
	"fmt"
	"io"
	"os"
	"time"
)

// DumpRateFile prints the rate-limit file at path for smtp-gated -L: its
// client, generation and period start, then one row per counter with its
// quota and count, in the layout of 1.4's -L (quota before used). A file
// that cannot be read or is not a rate-limit file is an error.
func DumpRateFile(w io.Writer, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	r, err := parseRecord(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	start := time.Unix(r.Start, 0)
	fmt.Fprintf(w, "client: %s\n", r.Client)
	fmt.Fprintf(w, "generation: %d\n", r.Generation)
	fmt.Fprintf(w, "period start: %s (%d)\n", start.Format(time.ANSIC), r.Start)
	fmt.Fprintf(w, "%2s %-32s %10s %10s\n", "id", "name", "quota", "used")
	for i, n := range counterNames {
		fmt.Fprintf(w, "%02d %-32s %10d %10d\n", i, n, r.Quota[i], r.Count[i])
	}
	return nil
}
