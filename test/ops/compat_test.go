package ops

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// A configuration file written for 1.4 — comments after values, numbers
// for enumerations, limit_* 0, no control_socket — starts the daemon as
// an unprivileged user and the daemon serves as 1.4 did: the trailing text
// is ignored with a warning naming file and line, limit_fsize 0 leaves
// room for the spool, limit_virt_size 0 and limit_data_size 0 leave the
// limits alone (the action script runs), and the control socket is made
// beside the pidfile.
func TestMigrated14Config(t *testing.T) {
	needRoot(t) // to hand the files to the unprivileged user
	s := newSetup(t)
	rd := filepath.Join(s.dir, "run")
	if err := os.Mkdir(rd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(rd, int(nobody.Uid), int(nobody.Gid)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(rd, "script.out")
	script := filepath.Join(s.dir, "action.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho ran \"$1\" > "+out+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`# smtp-gated 1.4 configuration
mode 1  # fixed
fixed_server 127.0.0.1 # the MTA
fixed_server_port %d	; Postfix
bind_address 127.0.0.1  # loopback only
port %d  # above 1024: no root needed
proxy_name test-proxy
pidfile %[3]s/smtp-gated.pid
statefile %[3]s/state
spool_path %[3]s/spool
lock_path %[3]s/lock
ratelimit_path %[3]s/ratelimit
action_script %[4]s
log_level 7 # debug
log_facility 24 # daemon
timeout_idle 300  # five minutes
max_per_host 1 # one session per client
lock_on 0x10 # maxhost
max_load 0
session_workers 2
limit_core_size 0
limit_virt_size 0
limit_data_size 0
limit_fsize 0
`, s.pf.Port, s.port, rd, script)
	d := harness.StartDaemon(t, conf, harness.WithUser(nobody.Uid, nobody.Gid))
	cf := d.ConfigFile()

	// One warning per line with trailing text, naming the file and line.
	for n, opt := range map[int]string{2: "mode", 3: "fixed_server", 4: "fixed_server_port", 5: "bind_address",
		6: "port", 14: "log_level", 15: "log_facility", 16: "timeout_idle", 17: "max_per_host", 18: "lock_on"} {
		d.WaitLog(t, regexp.MustCompile(`warning: master: `+regexp.QuoteMeta(fmt.Sprintf("%s:%d: %s: ", cf, n, opt))), time.Second)
	}
	if lines := d.LogLines(); strings.Contains(strings.Join(lines, "\n"), "limit_") {
		t.Errorf("a note about limit_* options set to 0, which leave the limits alone:\n%s", strings.Join(lines, "\n"))
	}

	// The control socket beside the pidfile, answering.
	sock := filepath.Join(rd, "control.sock")
	if r := run(t, nil, harness.CtlBinary(t), "-c", cf, "status"); r.code != 0 {
		t.Errorf("smtpgatectl -c (socket %s): %v", sock, r)
	}

	// limit_fsize 0: 8192 + the larger of scan_max_size and
	// spam_max_size; 0 for the others: the inherited limits.
	self := limits(t, os.Getpid())
	for _, pid := range allPids(t, d) {
		l := limits(t, pid)
		for k, want := range map[string]string{
			"Max file size":      "10008192",
			"Max core file size": "0",
			"Max address space":  self["Max address space"],
			"Max data size":      self["Max data size"],
		} {
			if l[k] != want {
				t.Errorf("pid %d (%s): %s %s, want %s", pid, cmdline(pid), k, l[k], want)
			}
		}
	}

	// A message goes through the spool to the MTA.
	c := greeted(t, s.addr())
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)

	// A second session from the same address while one is open: refused
	// and locked (max_per_host 1, lock_on maxhost); the action script runs
	// to its end.
	mark := d.Mark()
	a := greeted(t, s.addr())
	b := harness.Dial(t, s.addr())
	b.Expect(554)
	d.WaitLogAfter(t, mark, regexp.MustCompile(`action_script \S+ for .*: done in`), 10*time.Second)
	got, err := os.ReadFile(out)
	if err != nil || !strings.HasPrefix(string(got), "ran ") {
		t.Errorf("action script output %q, %v", got, err)
	}
	a.Quit()
}
