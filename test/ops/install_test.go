package ops

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"smtp-gated/test/harness"
)

// make install puts every piece under DESTDIR and PREFIX, with the
// units' and rc.d scripts' paths following SBINDIR.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	cmd := exec.Command("make", "-C", root, "install", "DESTDIR="+dest, "PREFIX=/opt/sg", "ETCDIR=/opt/sg/etc")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	want := map[string]os.FileMode{
		"opt/sg/sbin/smtp-gated":                                   0o755,
		"opt/sg/sbin/smtpgatectl":                                  0o755,
		"opt/sg/share/man/man8/smtp-gated.8":                       0o644,
		"opt/sg/share/man/man8/smtpgatectl.8":                      0o644,
		"opt/sg/share/man/man5/smtp-gated.conf.5":                  0o644,
		"opt/sg/etc/smtp-gated.conf":                               0o600,
		"opt/sg/share/examples/smtp-gated/smtp-gated.conf":         0o644,
		"opt/sg/lib/systemd/system/smtp-gated.service":             0o644,
		"opt/sg/lib/systemd/system/smtp-gated.socket":              0o644,
		"opt/sg/share/examples/smtp-gated/rc.d/openbsd/smtp_gated": 0o755,
		"opt/sg/share/examples/smtp-gated/rc.d/freebsd/smtp_gated": 0o755,
	}
	for f, mode := range want {
		fi, err := os.Stat(filepath.Join(dest, f))
		if err != nil {
			t.Errorf("not installed: %s", f)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", f, fi.Mode().Perm(), mode)
		}
	}
	for _, f := range []string{"opt/sg/lib/systemd/system/smtp-gated.service",
		"opt/sg/share/examples/smtp-gated/rc.d/openbsd/smtp_gated", "opt/sg/share/examples/smtp-gated/rc.d/freebsd/smtp_gated"} {
		b, _ := os.ReadFile(filepath.Join(dest, f))
		if strings.Contains(string(b), "/usr/local/sbin") || !strings.Contains(string(b), "/opt/sg/sbin/smtp-gated") {
			t.Errorf("%s does not name /opt/sg/sbin/smtp-gated", f)
		}
	}
	if out, err := exec.Command(filepath.Join(dest, "opt/sg/sbin/smtp-gated"), "-t", filepath.Join(dest, "opt/sg/etc/smtp-gated.conf")).CombinedOutput(); err != nil {
		t.Errorf("installed smtp-gated -t on the installed configuration: %v\n%s", err, out)
	}
}
