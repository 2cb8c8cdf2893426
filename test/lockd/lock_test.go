package lockd

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// EICAR through the proxy with lock_on virus: the lock file appears with
// set_user's ownership, lock_perm and the cause; the client's next
// connections are refused (554, msg_virus_locked) while another address
// is served; the action script ran once, with every variable of the
// manual, 1.4's four arguments, in spool_path; after lock_duration the client is served again and the file is
// gone.
func TestVirusLock(t *testing.T) {
	clamd := harness.Clamd(t)
	s := newSetup(t)
	d := s.start(t, "antivirus_type clamd", "antivirus_path "+clamd.Socket, "msg_virus_found virus found",
		"lock_on virus", "lock_duration 2", "lock_perm 0640", "msg_virus_locked you are locked",
		"action_script "+s.script, "spool_leave_on never")
	begin := time.Now()
	port, virus := sendVirus(t, s, "127.0.0.1")
	locked := time.Now()
	path := filepath.Join(s.lockDir(), "127.0.0.1")
	// Its content is the cause as 1.4 wrote it: the virus name.
	uid, mode, content := fileOwner(t, path)
	if uid != s.uid || mode != 0o640 || content != virus+"\n" {
		t.Errorf("lock file: uid %d mode %v content %q; want %d, 0640, %q", uid, mode, content, s.uid, virus+"\n")
	}
	for range 3 {
		code, text, c := greeting(t, "127.0.0.1", s.addr())
		if code != 554 || !strings.Contains(text, "test-proxy you are locked") {
			t.Fatalf("locked client: %d %q, want 554 with msg_virus_locked", code, text)
		}
		c.ExpectClosed()
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=lock, .*src=127\.0\.0\.1,`), 5*time.Second)
	// Another address is served, its mail delivered.
	c := harness.DialFrom(t, "127.0.0.2", s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)

	// The script ran once for the lock, not once per connection.
	env := s.waitEnvs(t, 1)[0]
	spool := regexp.MustCompile(`^` + regexp.QuoteMeta(filepath.Join(s.dir, "spool")) + `/\d+\.\d+$`)
	want := map[string]func(string) bool{
		"PROXY_NAME":    eq("test-proxy"),
		"FOUND":         eq("VIRUS"),
		"VIRUS_NAME":    eq(virus),
		"SPAM_SCORE":    eq("0.000"),
		"SOURCE_IP":     eq("127.0.0.1"),
		"SOURCE_PORT":   eq(strconv.Itoa(port)),
		"TARGET_IP":     eq("127.0.0.1"),
		"TARGET_PORT":   eq(strconv.Itoa(s.pf.Port)),
		"LOCAL_IP":      eq("127.0.0.1"),
		"LOCAL_PORT":    eq(strconv.Itoa(s.port)),
		"IDENT":         eq(""),
		"IDENT_COUNT":   eq("0"),
		"HELO":          eq("client.test"),
		"MAIL_FROM":     eq("a@example.com"),
		"RCPTS_TOTAL":   eq("1"),
		"SIZE":          func(v string) bool { n, err := strconv.Atoi(v); return err == nil && n > 300 },
		"TRANSACTION":   eq("1"),
		"AUTH":          eq("1"), // the Postfix advertises AUTH
		"SPOOL_NAME":    spool.MatchString,
		"LOCK_FILE":     eq(path),
		"LOCK_DURATION": eq("2"),
		"TIME": func(v string) bool {
			tm, err := time.ParseInLocation(time.ANSIC, v, time.Local)
			return err == nil && !tm.Before(begin.Truncate(time.Second)) && !tm.After(locked)
		},
		"UNIXTIME": func(v string) bool {
			n, err := strconv.ParseInt(v, 10, 64)
			return err == nil && n >= begin.Unix() && n <= locked.Unix()
		},
	}
	for k, ok := range want {
		if v, set := env[k]; !set || !ok(v) {
			t.Errorf("%s=%q (set: %v): wrong", k, v, set)
		}
	}
	if len(want) != 23 {
		t.Fatalf("%d variables checked, the manual has 23", len(want))
	}
	// 1.4's arguments: FOUND SOURCE_IP IDENT-or-"-" TARGET_IP; its
	// working directory: spool_path.
	if args := []string{env["ARGC"], env["ARG1"], env["ARG2"], env["ARG3"], env["ARG4"]}; strings.Join(args, " ") != "4 VIRUS 127.0.0.1 - 127.0.0.1" {
		t.Errorf("arguments %q, want 4: VIRUS 127.0.0.1 - 127.0.0.1", args)
	}
	if env["CWD"] != s.spoolDir() {
		t.Errorf("working directory %q, want spool_path %s", env["CWD"], s.spoolDir())
	}

	// lock_duration 2: served again, and the file is gone.
	time.Sleep(time.Until(locked.Add(2100 * time.Millisecond)))
	code, text, c := greeting(t, "127.0.0.1", s.addr())
	if code != 220 {
		t.Fatalf("after lock_duration: %d %q, want 220", code, text)
	}
	c.Quit()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the expired lock file is still there: %v", err)
	}
	d.WaitLog(t, regexp.MustCompile(`LOCK:EXPIRED src=127\.0\.0\.1, ident=-, `), 5*time.Second)
}

func eq(want string) func(string) bool { return func(v string) bool { return v == want } }

// lock_duration -1: the lock stays, and so does the refusal; the periodic
// sweep leaves it alone.
func TestLockForever(t *testing.T) {
	clamd := harness.Clamd(t)
	s := newSetup(t)
	s.start(t, "antivirus_type clamd", "antivirus_path "+clamd.Socket, "lock_on virus", "lock_duration -1")
	_, virus := sendVirus(t, s, "127.0.0.1")
	time.Sleep(3 * time.Second)
	if code, text, _ := greeting(t, "127.0.0.1", s.addr()); code != 554 {
		t.Fatalf("after 3 s with lock_duration -1: %d %q, want 554", code, text)
	}
	if _, err := os.Stat(filepath.Join(s.lockDir(), "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	// smtpgatectl lists and removes it.
	if out := s.mustCtl(t, "locks"); !regexp.MustCompile(`(?m)^127\.0\.0\.1\s+` + regexp.QuoteMeta(virus) + `\s+\S+\s+never\s+` + harness.TestUser).MatchString(out) {
		t.Errorf("locks:\n%s", out)
	}
	s.mustCtl(t, "unlock", "127.0.0.1")
	code, _, c := greeting(t, "127.0.0.1", s.addr())
	if code != 220 {
		t.Fatalf("after unlock: %d, want 220", code)
	}
	c.Quit()
}

// A file in lock_path that belongs to someone else than set_user is the
// administrator's: it is no lock, it is not removed, and a virus from its
// address does not lock it (the action script still runs, without a
// LOCK_FILE).
func TestAdminFileProtects(t *testing.T) {
	clamd := harness.Clamd(t)
	s := newSetup(t)
	s.start(t, "antivirus_type clamd", "antivirus_path "+clamd.Socket, "lock_on virus", "lock_duration 3600",
		"action_script "+s.script)
	path := filepath.Join(s.lockDir(), "127.0.0.3")
	if err := os.WriteFile(path, []byte("never lock the printer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour) // long expired, were it a lock
	os.Chtimes(path, old, old)
	code, _, c := greeting(t, "127.0.0.3", s.addr())
	if code != 220 {
		t.Fatalf("a client with an administrator's file: %d, want 220", code)
	}
	c.Quit()
	sendVirus(t, s, "127.0.0.3")
	uid, _, content := fileOwner(t, path)
	if uid != 0 || content != "never lock the printer\n" {
		t.Errorf("the administrator's file changed: uid %d, %q", uid, content)
	}
	code, _, c = greeting(t, "127.0.0.3", s.addr())
	if code != 220 {
		t.Fatalf("after a virus from a protected client: %d, want 220", code)
	}
	c.Quit()
	if env := s.waitEnvs(t, 1)[0]; env["FOUND"] != "VIRUS" || env["LOCK_FILE"] != "" || env["SOURCE_IP"] != "127.0.0.3" {
		t.Errorf("script environment for a protected client: %v", env)
	}
	// smtpgatectl cannot lock it either.
	if code, out := s.ctl(t, nil, "lock", "127.0.0.3"); code != 1 || !strings.Contains(out, "administrator's file") {
		t.Errorf("smtpgatectl lock of a protected client: exit %d %q", code, out)
	}
}

// A lock made while a message is on its way stops its final dot: 451,
// then the client is disconnected as in 1.4 (no takeover session), and
// the MTA never gets the message.
func TestLockedBeforeDot(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "lock_on virus", "lock_duration 3600", "msg_virus_locked you are locked")
	c := harness.DialFrom(t, "127.0.0.4", s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	token := harness.Token(t)
	body := harness.DotStuff(harness.Message("a@example.com", "b@example.org", token))
	c.Send(string(body[:len(body)-3]))
	s.mustCtl(t, "lock", "127.0.0.4", "1h", "abuse desk")
	c.Send(".\r\n")
	if r := c.Expect(451); !strings.Contains(r, "4.4.0 test-proxy you are locked") {
		t.Fatalf("reply to the final dot of a locked client: %q", r)
	}
	c.ExpectClosed()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=lock, .*src=127\.0\.0\.4,`), 5*time.Second)
	if regexp.MustCompile(`SESSION TAKEOVER: src=127\.0\.0\.4,`).MatchString(d.Log()) {
		t.Errorf("a takeover session after the lock at the final dot")
	}
	s.pf.NotDelivered(t, token, 2*time.Second)
	out := s.mustCtl(t, "locks")
	if !strings.Contains(out, "abuse desk") {
		t.Errorf("locks:\n%s", out)
	}
}

// Commands refused by the regex_* options lock with lock_on regex, and
// the script learns which command it was as 1.4 told it: FOUND is
// REGEX_HELO, REGEX_MAIL_FROM or REGEX_RCPT_TO, in the lock file too.
func TestRegexFound(t *testing.T) {
	s := newSetup(t)
	s.start(t, "lock_on regex", "lock_duration 3600", "action_script "+s.script,
		"regex_reject_helo ^bad\\.helo$", "regex_reject_mail_from ^bad@", "regex_reject_rcpt_to ^bad@")
	steps := []struct {
		ip    string
		cmds  []string
		found string
	}{
		{"127.0.0.5", []string{"EHLO bad.helo"}, "REGEX_HELO"},
		{"127.0.0.6", []string{"EHLO client.test", "MAIL FROM:<bad@example.com>"}, "REGEX_MAIL_FROM"},
		{"127.0.0.7", []string{"EHLO client.test", "MAIL FROM:<a@example.com>", "RCPT TO:<bad@example.org>"}, "REGEX_RCPT_TO"},
	}
	for _, st := range steps {
		c := harness.DialFrom(t, st.ip, s.addr())
		c.Expect(220)
		for i, cmd := range st.cmds {
			want := 250
			if i == len(st.cmds)-1 {
				want = 550
			}
			c.Cmd(cmd, want)
		}
		c.Quit()
		if _, _, content := fileOwner(t, filepath.Join(s.lockDir(), st.ip)); content != st.found+"\n" {
			t.Errorf("%s: lock file content %q, want %q", st.ip, content, st.found+"\n")
		}
	}
	got := map[string]string{}
	for _, env := range s.waitEnvs(t, len(steps)) {
		got[env["SOURCE_IP"]] = env["FOUND"]
		if env["ARG1"] != env["FOUND"] || env["ARG2"] != env["SOURCE_IP"] || env["ARG3"] != "-" || env["ARG4"] != "127.0.0.1" {
			t.Errorf("arguments %q %q %q %q", env["ARG1"], env["ARG2"], env["ARG3"], env["ARG4"])
		}
	}
	for _, st := range steps {
		if got[st.ip] != st.found {
			t.Errorf("%s: FOUND %q, want %q", st.ip, got[st.ip], st.found)
		}
	}
}

// Lock files with an ident are named as 1.4 named them: bytes of the
// ident other than letters, digits and -=+: written '_', 20 bytes kept.
// So an administrator's file of a 1.4 installation still protects its
// client, and the daemon's own locks have the names 1.4's tools expect.
func TestIdentFileNames14(t *testing.T) {
	s := newSetup(t)
	s.start(t, "lock_on virus", "lock_duration 3600")
	// 1.4's name for the ident "DOM\user.name": an administrator's file.
	admin := filepath.Join(s.lockDir(), "127.0.0.9-DOM_user_name")
	if err := os.WriteFile(admin, []byte("never lock him\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := s.ctl(t, nil, "lock", `127.0.0.9-DOM\user.name`); code != 1 || !strings.Contains(out, "administrator's file") {
		t.Errorf("lock of an ident protected by its 1.4-named file: exit %d %q", code, out)
	}
	// A lock the daemon makes for an ident gets 1.4's name.
	s.mustCtl(t, "lock", "127.0.0.9-a.b@example.org/very/long/ident", "1h", "abuse")
	path := filepath.Join(s.lockDir(), "127.0.0.9-a_b_example_org_very")
	if uid, _, content := fileOwner(t, path); uid != s.uid || !strings.HasPrefix(content, "abuse\n") {
		t.Errorf("lock file %s: uid %d, content %q", path, uid, content)
	}
	if out := s.mustCtl(t, "locks"); !strings.Contains(out, "127.0.0.9-a_b_example_org_very") {
		t.Errorf("locks:\n%s", out)
	}
	s.mustCtl(t, "unlock", "127.0.0.9-a.b@example.org/very/long/ident")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("after unlock: %v", err)
	}
}

// A client over ratelimit_rcptto_rejects with lock_on ratelimit: the
// script's FOUND is 1.4's RATELIMIT_RCPTTO_REJECTS, and so is the lock
// file's content.
func TestRatelimitFound(t *testing.T) {
	s := newSetup(t)
	s.start(t, "ratelimit_expiration 3600", "ratelimit_rcptto_rejects 1", "lock_on ratelimit", "lock_duration 3600",
		"action_script "+s.script)
	c := harness.DialFrom(t, "127.0.0.8", s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	refused := false
	for range 4 {
		c.Send("RCPT TO:<reject@example.org>\r\n")
		code, text, _ := c.Reply()
		if code == 0 {
			break
		}
		if strings.Contains(text, "test-proxy") {
			refused = true
			break
		}
	}
	c.Close()
	if !refused {
		t.Fatal("no refusal of the proxy's after 4 refused recipients with ratelimit_rcptto_rejects 1")
	}
	env := s.waitEnvs(t, 1)[0]
	if env["FOUND"] != "RATELIMIT_RCPTTO_REJECTS" || env["ARG1"] != "RATELIMIT_RCPTTO_REJECTS" || env["ARG2"] != "127.0.0.8" {
		t.Errorf("FOUND %q, arguments %q %q", env["FOUND"], env["ARG1"], env["ARG2"])
	}
	if _, _, content := fileOwner(t, filepath.Join(s.lockDir(), "127.0.0.8")); content != "RATELIMIT_RCPTTO_REJECTS\n" {
		t.Errorf("lock file content %q", content)
	}
}
