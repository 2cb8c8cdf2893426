package e2e

import (
	"os"
	"syscall"
	"testing"

	"smtp-gated/test/harness"
)

// smallSpool mounts a tmpfs of 1 MiB as a spool directory, removed when
// the test ends.
func smallSpool(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := harness.DaemonDir(t, "sgsp-")
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=1m,mode=0777"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("umount %s: %v", dir, err)
		}
	})
	return dir
}
