package harness

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"testing"
)

// TestUser is the unprivileged system user the tests run the daemon's
// children as (set_user, set_group). SystemUser creates it.
const TestUser = "smtpgw-test"

// SystemUser makes sure TestUser exists (useradd --system when it does
// not) and returns its ids. It needs root: otherwise it skips the test
// with "needs root: " + why.
func SystemUser(t testing.TB, why string) (uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
	u, err := user.Lookup(TestUser)
	if err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TestUser).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd %s: %v %s", TestUser, err, out)
		}
		if u, err = user.Lookup(TestUser); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// DaemonDir makes a directory for one daemon's files, removed at the end
// of the test. It is mode 0755: the daemon's unprivileged children must
// traverse it. prefix starts its name; keep it short, the control socket's
// path must fit in 108 bytes.
func DaemonDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	return dir
}

// FixedConfig is the start of a configuration for a daemon in mode fixed
// in front of the MTA on 127.0.0.1:mtaPort, listening on 127.0.0.1:port,
// with every file it writes under dir (from DaemonDir). Callers append
// their own lines.
func FixedConfig(mtaPort string, port int, dir string) string {
	return fmt.Sprintf(`mode fixed
fixed_server 127.0.0.1
fixed_server_port %s
bind_address 127.0.0.1
port %d
pidfile %[3]s/pid
control_socket %[3]s/ctl.sock
statefile %[3]s/state
spool_path %[3]s/spool
lock_path %[3]s/lock
ratelimit_path %[3]s/ratelimit
max_load 0
`, mtaPort, port, dir)
}
