//go:build !linux

package e2e

import "testing"

// smallSpool needs a tmpfs mount, which these tests make on Linux only.
func smallSpool(t *testing.T) string {
	t.Skip("a tmpfs spool is mounted on Linux only")
	return ""
}
