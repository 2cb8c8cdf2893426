package ops

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// A chrooted 1.4 installation: with chroot_path set, every path option
// names a path inside it (pidfile, statefile, the control socket beside
// the pidfile, spool_path, lock_path, ratelimit_path, action_script,
// antivirus_path), -s, -r and -K find the pidfile and statefile there,
// lockd and lookup run with chroot_path as their root and the session
// workers with spool_path inside it, and the action script runs in the
// chroot, in spool_path, as 1.4 ran it. Nothing is written at the paths
// as the host would read them.
func TestChrooted14Config(t *testing.T) {
	needRoot(t)
	uid, gid := harness.SystemUser(t, "the daemon drops to set_user")
	clamd := harness.Clamd(t)
	s := newSetup(t)
	jail := filepath.Join(s.dir, "jail")
	// Host paths that must stay untouched: the configuration's paths as
	// the host would read them.
	tag := "sgchroot-" + strconv.Itoa(s.port)
	for _, dir := range []string{"bin", "out", "run/" + tag} {
		if err := os.MkdirAll(filepath.Join(jail, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chown(filepath.Join(jail, "out"), uid, gid)
	// The action script is a program that needs nothing else in the
	// chroot; the clamd socket is reached through its path in the chroot.
	script, err := os.ReadFile(harness.BuildBinary(t, "smtp-gated/test/ops/chrootaction"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(jail, "bin", "action"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(clamd.Socket, filepath.Join(jail, "run", tag, "clamd.ctl")); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`# smtp-gated 1.4, chrooted
mode fixed
fixed_server 127.0.0.1 # the MTA
fixed_server_port %d
bind_address 127.0.0.1
port %d
proxy_name test-proxy
chroot_path %s
set_user %s
set_group %[4]s
limit_core_size 0
limit_fsize 0
pidfile /run/%[5]s/smtp-gated.pid
statefile /run/%[5]s/state
spool_path /var/spool/%[5]s/msg
lock_path /var/spool/%[5]s/lock
ratelimit_path /var/spool/%[5]s/ratelimit
ratelimit_expiration 3600
ratelimit_connections 100
action_script /bin/action
antivirus_type clamd
antivirus_path /run/%[5]s/clamd.ctl
msg_virus_found virus found
lock_on virus
lock_duration 3600  # an hour
log_level 7
session_workers 2
max_load 0
timeout_shutdown 10
`, s.pf.Port, s.port, jail, harness.TestUser, tag)
	d := harness.StartDaemon(t, conf)
	cf := d.ConfigFile()
	inJail := func(p string) string { return filepath.Join(jail, p) }
	t.Cleanup(func() {
		for _, p := range []string{"/run/" + tag, "/var/spool/" + tag} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s exists on the host: a path was read outside chroot_path", p)
				os.RemoveAll(p)
			}
		}
	})

	// The pidfile and the control socket are in the chroot.
	if b, err := os.ReadFile(inJail("/run/" + tag + "/smtp-gated.pid")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(d.Pid()) {
		t.Errorf("pidfile in the chroot: %q, %v; want %d", b, err, d.Pid())
	}
	if fi, err := os.Stat(inJail("/run/" + tag + "/control.sock")); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("control socket beside the pidfile in the chroot: %v", err)
	}
	if r := run(t, nil, harness.CtlBinary(t), "-c", cf, "status"); r.code != 0 {
		t.Errorf("smtpgatectl -c: %v", r)
	}

	// The roots of the processes that chroot.
	roles := children(t, d)
	for role, pids := range roles {
		for _, pid := range pids {
			root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"session": inJail("/var/spool/" + tag + "/msg"), "lookup": jail, "lockd": jail, "scanner": "/"}[role]
			if root != want {
				t.Errorf("%s pid %d has root %q, want %q", role, pid, root, want)
			}
		}
	}

	// A virus: found by the clamd of antivirus_path in the chroot; the
	// lock and the rate-limit file are made in the chroot; the action
	// script runs there, in spool_path.
	c := greeted(t, s.addr())
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t)))))
	r := c.Expect(550)
	c.Quit()
	virus := regexp.MustCompile(` \((\S+)\)$`).FindStringSubmatch(r) // "msg_virus_found (NAME)"
	if virus == nil {
		t.Fatalf("reply to a virus: %q", r)
	}
	lock := inJail("/var/spool/" + tag + "/lock/127.0.0.1")
	if b, err := os.ReadFile(lock); err != nil || string(b) != virus[1]+"\n" {
		t.Errorf("lock file in the chroot: %q, %v", b, err)
	}
	if _, err := os.Stat(inJail("/var/spool/" + tag + "/ratelimit/127.0.0.1")); err != nil {
		t.Errorf("rate-limit file in the chroot: %v", err)
	}
	d.WaitLog(t, regexp.MustCompile(`action_script /bin/action for .*: done in`), 10*time.Second)
	runs, _ := filepath.Glob(inJail("/out/run.*[0-9]"))
	if len(runs) != 1 {
		t.Fatalf("the action script wrote %d files in the chroot's /out, want 1", len(runs))
	}
	b, _ := os.ReadFile(runs[0])
	env := map[string]string{}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		env[k] = v
	}
	spool := "/var/spool/" + tag + "/msg"
	for k, want := range map[string]string{
		"ARGC": "4", "ARG1": "VIRUS", "ARG2": "127.0.0.1", "ARG3": "-", "ARG4": "127.0.0.1",
		"CWD": spool, "LOCK_FILE": "/var/spool/" + tag + "/lock/127.0.0.1", "VIRUS_NAME": virus[1],
	} {
		if env[k] != want {
			t.Errorf("action script in the chroot: %s=%q, want %q", k, env[k], want)
		}
	}
	if !strings.HasPrefix(env["SPOOL_NAME"], spool+"/") {
		t.Errorf("SPOOL_NAME=%q, want a file of %s as the script sees it", env["SPOOL_NAME"], spool)
	}

	// -s, -r and -K find the statefile and the pidfile in the chroot.
	bin := harness.DaemonBinary(t)
	if r := run(t, nil, bin, "-s", cf); r.code != 0 || r.stdout == "" {
		t.Errorf("smtp-gated -s: %v", r)
	}
	if _, err := os.Stat(inJail("/run/" + tag + "/state")); err != nil {
		t.Errorf("statefile in the chroot: %v", err)
	}
	if r := run(t, nil, bin, "-S", cf); strings.TrimSpace(r.stdout) != inJail("/run/"+tag+"/state") {
		t.Errorf("smtp-gated -S: %v", r)
	}
	mark := d.Mark()
	if r := run(t, nil, bin, "-r", cf); r.code != 0 {
		t.Errorf("smtp-gated -r: %v", r)
	}
	d.WaitLogAfter(t, mark, regexp.MustCompile(`configuration reloaded from `), 20*time.Second)
	if r := run(t, nil, bin, "-K", cf); r.code != 0 {
		t.Errorf("smtp-gated -K: %v", r)
	}
	if code := d.WaitExit(t, 30*time.Second); code != 0 {
		t.Errorf("exit status %d after -K", code)
	}
	if _, err := os.Stat(inJail("/run/" + tag + "/smtp-gated.pid")); !os.IsNotExist(err) {
		t.Errorf("pidfile after the stop: %v", err)
	}
}
