package lockd

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/ipc"
)

// script writes an executable shell script and returns its path.
func script(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "action.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// envScript is a script that writes its environment to a new file in
// dir for each run, and after it ARGC, ARG1 to ARG4 and CWD: its
// arguments and working directory.
func envScript(t testing.TB, dir string) string {
	return script(t, fmt.Sprintf(`{ env; printf 'ARGC=%%s\nARG1=%%s\nARG2=%%s\nARG3=%%s\nARG4=%%s\nCWD=%%s\n' "$#" "$1" "$2" "$3" "$4" "$(pwd)"; } > %[1]s/env.$$.tmp && mv %[1]s/env.$$.tmp %[1]s/env.$$`, dir))
}

// runs returns the environments the script wrote, each as a map.
func runs(t testing.TB, dir string) []map[string]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "env.*[0-9]"))
	var out []map[string]string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for line := range strings.Lines(string(b)) {
			k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
			env[k] = v
		}
		out = append(out, env)
	}
	return out
}

func TestScriptEnvironment(t *testing.T) {
	out := t.TempDir()
	spool := t.TempDir()
	s, _ := testServer(t, "lock_on virus", "lock_duration 3600", "action_script "+envScript(t, out), "spool_path "+spool)
	start := time.Unix(1795000000, 0)
	f := &ipc.Found{Event: "virus", ID: 9, Client: cli4, Local: local4, Target: mta4, Ident: "alice", IdentCount: 2,
		Detail: "Eicar-Test-Signature.UNOFFICIAL", Helo: "client.test", MailFrom: "a@example.com", Rcpts: 3, Size: 1234,
		Transaction: 2, Auth: 5, Spool: "/var/spool/smtp-gated/msg/1795000000.9", Start: start.Unix()}
	found(t, s, f)
	found(t, s, f) // locked already: no second run
	s.script.wg.Wait()
	got := runs(t, out)
	if len(got) != 1 {
		t.Fatalf("%d runs, want 1 (once per lock)", len(got))
	}
	want := map[string]string{
		"PROXY_NAME": "gate.test", "FOUND": "VIRUS", "VIRUS_NAME": "Eicar-Test-Signature.UNOFFICIAL", "SPAM_SCORE": "0.000",
		"SOURCE_IP": "192.0.2.1", "SOURCE_PORT": "40000", "TARGET_IP": "198.51.100.7", "TARGET_PORT": "25",
		"LOCAL_IP": "192.0.2.254", "LOCAL_PORT": "9199", "IDENT": "alice", "IDENT_COUNT": "2",
		"HELO": "client.test", "MAIL_FROM": "a@example.com", "RCPTS_TOTAL": "3", "SIZE": "1234",
		"TRANSACTION": "2", "AUTH": "5", "SPOOL_NAME": "/var/spool/smtp-gated/msg/1795000000.9",
		"LOCK_FILE":     filepath.Join(s.cfg.Load().LockPath, "192.0.2.1-alice"),
		"LOCK_DURATION": "3600",
		"TIME":          start.Format(time.ANSIC), "UNIXTIME": "1795000000",
		// 1.4's arguments, and its working directory.
		"ARGC": "4", "ARG1": "VIRUS", "ARG2": "192.0.2.1", "ARG3": "alice", "ARG4": "198.51.100.7",
		"CWD": spool,
	}
	for k, v := range want {
		if g, ok := got[0][k]; !ok || g != v {
			t.Errorf("%s=%q (set %v), want %q", k, g, ok, v)
		}
	}
	if got[0]["PATH"] == "" {
		t.Error("no PATH")
	}
}

// Events that do not lock: virus, spam, maxhost and maxident run the
// script each time; the others do not run it.
func TestScriptWithoutLocking(t *testing.T) {
	out := t.TempDir()
	s, _ := testServer(t, "lock_on never", "action_script "+envScript(t, out), "spool_path "+filepath.Join(out, "none"))
	found(t, s, &ipc.Found{Event: "spam", Client: cli4, SpamScore: 1002.3})
	found(t, s, &ipc.Found{Event: "maxhost", Client: cli4})
	found(t, s, &ipc.Found{Event: "dnsbl", Client: cli4, Detail: "bl.test"})
	found(t, s, &ipc.Found{Event: "ratelimit", Client: cli4})
	s.script.wg.Wait()
	got := runs(t, out)
	var words []string
	for _, env := range got {
		words = append(words, env["FOUND"])
		if score := map[string]string{"SPAM": "1002.300", "MAX_HOST": "0.000"}[env["FOUND"]]; env["SPAM_SCORE"] != score {
			t.Errorf("%s: SPAM_SCORE %q, want %q", env["FOUND"], env["SPAM_SCORE"], score)
		}
		if env["LOCK_FILE"] != "" || env["IDENT_COUNT"] != "0" || env["TARGET_IP"] != "" {
			t.Errorf("without a lock, ident or target: %v", env)
		}
		// No ident: "-"; no target: an empty argument. No spool_path:
		// the script runs in /.
		if env["ARGC"] != "4" || env["ARG1"] != env["FOUND"] || env["ARG2"] != "192.0.2.1" || env["ARG3"] != "-" ||
			env["ARG4"] != "" || env["CWD"] != "/" {
			t.Errorf("arguments %s %q %q %q %q, cwd %q", env["ARGC"], env["ARG1"], env["ARG2"], env["ARG3"], env["ARG4"], env["CWD"])
		}
	}
	if len(got) != 2 || !strings.Contains(strings.Join(words, ","), "SPAM") || !strings.Contains(strings.Join(words, ","), "MAX_HOST") {
		t.Errorf("runs for %v, want SPAM and MAX_HOST", words)
	}
	// An unknown event is refused.
	if err := s.found(&ipc.Found{Event: "frob", Client: cli4}); err == nil {
		t.Error("unknown event accepted")
	}
}

// FOUND and the lock file's content take 1.4's words: a regex event names
// the command, a rate-limit event the counter, a virus lock its virus.
func TestFoundWords(t *testing.T) {
	for _, c := range []struct {
		f           ipc.Found
		found, lock string
	}{
		{ipc.Found{Event: "virus", Detail: "Eicar-Test-Signature"}, "VIRUS", "Eicar-Test-Signature"},
		{ipc.Found{Event: "spam", SpamScore: 9}, "SPAM", "SPAM"},
		{ipc.Found{Event: "maxhost"}, "MAX_HOST", "MAX_HOST"},
		{ipc.Found{Event: "maxident", Detail: "alice"}, "MAX_IDENT", "MAX_IDENT"},
		{ipc.Found{Event: "dnsbl", Detail: "bl.test"}, "DNSBL", "DNSBL"},
		{ipc.Found{Event: "spf", Detail: "a@b.test"}, "SPF", "SPF"},
		{ipc.Found{Event: "earlytalker"}, "EARLYTALK", "EARLYTALK"},
		{ipc.Found{Event: "regex", Command: "HELO", Detail: "x"}, "REGEX_HELO", "REGEX_HELO"},
		{ipc.Found{Event: "regex", Command: "EHLO", Detail: "x"}, "REGEX_HELO", "REGEX_HELO"},
		{ipc.Found{Event: "regex", Command: "MAIL", Detail: "a@b"}, "REGEX_MAIL_FROM", "REGEX_MAIL_FROM"},
		{ipc.Found{Event: "regex", Command: "RCPT", Detail: "a@b"}, "REGEX_RCPT_TO", "REGEX_RCPT_TO"},
		{ipc.Found{Event: "regex", Command: "DATA"}, "REGEX", "REGEX"},
		{ipc.Found{Event: "ratelimit", Detail: ipc.RateMailfromRejects}, "RATELIMIT_MAILFROM_REJECTS", "RATELIMIT_MAILFROM_REJECTS"},
		{ipc.Found{Event: "ratelimit", Detail: ipc.RateRcpttoRejects}, "RATELIMIT_RCPTTO_REJECTS", "RATELIMIT_RCPTTO_REJECTS"},
		{ipc.Found{Event: "ratelimit", Detail: ipc.RateConnections}, "RATELIMIT_CONNECTIONS", "RATELIMIT_CONNECTIONS"},
		{ipc.Found{Event: "ratelimit", Detail: "x\n"}, "RATELIMIT", "RATELIMIT"}, // not a counter
		{ipc.Found{Event: "frob"}, "UNKNOWN", "UNKNOWN"},
	} {
		if got := foundWord(&c.f); got != c.found {
			t.Errorf("%s/%s/%s: FOUND %q, want %q", c.f.Event, c.f.Command, c.f.Detail, got, c.found)
		}
		if got := lockCause(&c.f); got != c.lock {
			t.Errorf("%s/%s/%s: lock cause %q, want %q", c.f.Event, c.f.Command, c.f.Detail, got, c.lock)
		}
	}
}

// A hanging script is killed with its process group; a failing one is
// logged with its output; neither holds up the caller.
func TestScriptTimeoutAndFailure(t *testing.T) {
	dir := t.TempDir()
	hang := script(t, fmt.Sprintf("sleep 600 & echo $! > %s/child; sleep 600", dir))
	s, lb := testServer(t, "lock_on never", "action_script "+hang)
	s.script.timeout = 300 * time.Millisecond
	begin := time.Now()
	found(t, s, &ipc.Found{Event: "virus", Client: cli4})
	if d := time.Since(begin); d > 200*time.Millisecond {
		t.Errorf("found waited %v for the script", d)
	}
	s.script.wg.Wait()
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("the script was killed after %v", d)
	}
	if !strings.Contains(lb.String(), "killed (process group") {
		t.Errorf("no kill logged:\n%s", lb)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "child"))
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		t.Errorf("child pid %q: %v", b, err)
	} else {
		deadline := time.Now().Add(2 * time.Second)
		for syscall.Kill(pid, 0) == nil && !zombie(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil && !zombie(pid) {
			t.Errorf("the script's background child %d survived", pid)
		}
	}

	s.setConfig(t, "lock_on never", "action_script "+script(t, "echo something went wrong >&2; exit 3"))
	found(t, s, &ipc.Found{Event: "virus", Client: cli4})
	s.script.wg.Wait()
	if !strings.Contains(lb.String(), `exit status 3`) || !strings.Contains(lb.String(), `something went wrong`) {
		t.Errorf("failure not logged with its output:\n%s", lb)
	}
	s.setConfig(t, "lock_on never", "action_script /nonexistent/script")
	found(t, s, &ipc.Found{Event: "virus", Client: cli4})
	s.script.wg.Wait()
	if !strings.Contains(lb.String(), "/nonexistent/script") {
		t.Errorf("a missing script not logged:\n%s", lb)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// At most scriptSlots scripts run at once; the others wait their turn.
func TestScriptConcurrency(t *testing.T) {
	dir := t.TempDir()
	body := fmt.Sprintf(`touch %[1]s/run.$$; sleep 0.2; ls %[1]s | grep -c '^run\.' >> %[1]s/counts; rm %[1]s/run.$$`, dir)
	s, _ := testServer(t, "lock_on never", "action_script "+script(t, body))
	for range 12 {
		found(t, s, &ipc.Found{Event: "virus", Client: cli4})
	}
	s.script.wg.Wait()
	b, _ := os.ReadFile(filepath.Join(dir, "counts"))
	counts := strings.Fields(string(b))
	if len(counts) != 12 {
		t.Fatalf("%d runs recorded, want 12: %q", len(counts), b)
	}
	for _, c := range counts {
		if n, _ := strconv.Atoi(c); n > scriptSlots || n < 1 {
			t.Errorf("%d scripts ran at once, at most %d may", n, scriptSlots)
		}
	}
}

// A script that runs in chroot_path sees the spool file inside it.
func TestSpoolNameInChroot(t *testing.T) {
	dir := t.TempDir()
	chrooted := testConfig(t, dir, "chroot_path /jail/")
	for _, c := range []struct {
		chroot     bool
		path, want string
	}{
		{true, "/jail/var/spool/msg/1.2", "/var/spool/msg/1.2"},
		{true, "/jailbreak/msg/1.2", "/jailbreak/msg/1.2"},
		{true, "", ""},
		{false, "/jail/var/spool/msg/1.2", "/jail/var/spool/msg/1.2"},
	} {
		cfg := chrooted
		if !c.chroot {
			cfg = chrooted.OnHost()
		}
		if got := spoolName(cfg, c.path); got != c.want {
			t.Errorf("spoolName(chroot %v, %q) = %q, want %q", c.chroot, c.path, got, c.want)
		}
	}
}
