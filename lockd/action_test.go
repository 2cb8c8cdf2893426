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
// dir for each run.
func envScript(t testing.TB, dir string) string {
	return script(t, fmt.Sprintf(`env > %s/env.$$.tmp && mv %s/env.$$.tmp %s/env.$$`, dir, dir, dir))
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
	s, _ := testServer(t, "lock_on virus", "lock_duration 3600", "action_script "+envScript(t, out))
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
		"PROXY_NAME": "gate.test", "FOUND": "VIRUS", "VIRUS_NAME": "Eicar-Test-Signature.UNOFFICIAL", "SPAM_SCORE": "",
		"SOURCE_IP": "192.0.2.1", "SOURCE_PORT": "40000", "TARGET_IP": "198.51.100.7", "TARGET_PORT": "25",
		"LOCAL_IP": "192.0.2.254", "LOCAL_PORT": "9199", "IDENT": "alice", "IDENT_COUNT": "2",
		"HELO": "client.test", "MAIL_FROM": "a@example.com", "RCPTS_TOTAL": "3", "SIZE": "1234",
		"TRANSACTION": "2", "AUTH": "5", "SPOOL_NAME": "/var/spool/smtp-gated/msg/1795000000.9",
		"LOCK_FILE": filepath.Join(s.cfg.Load().LockPath, "192.0.2.1-alice"),
		"TIME":      start.Format(time.ANSIC), "UNIXTIME": "1795000000",
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
	s, _ := testServer(t, "lock_on never", "action_script "+envScript(t, out))
	found(t, s, &ipc.Found{Event: "spam", Client: cli4, SpamScore: 1002.3})
	found(t, s, &ipc.Found{Event: "maxhost", Client: cli4})
	found(t, s, &ipc.Found{Event: "dnsbl", Client: cli4, Detail: "bl.test"})
	found(t, s, &ipc.Found{Event: "ratelimit", Client: cli4})
	s.script.wg.Wait()
	got := runs(t, out)
	var words []string
	for _, env := range got {
		words = append(words, env["FOUND"])
		if env["FOUND"] == "SPAM" && env["SPAM_SCORE"] != "1002.3" {
			t.Errorf("SPAM_SCORE %q", env["SPAM_SCORE"])
		}
		if env["LOCK_FILE"] != "" || env["IDENT_COUNT"] != "" || env["TARGET_IP"] != "" {
			t.Errorf("without a lock, ident or target: %v", env)
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
