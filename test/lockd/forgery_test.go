//go:build linux

package lockd

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

// A session worker is taken for compromised: code running in it can send
// anything on its links to master and to lockd. These tests take a real
// worker over (the process is stopped, and the test speaks on duplicates
// of its own link descriptors, taken with pidfd_getfd) and send the
// forgeries such code would.

// stolen is a session worker taken over by the test.
type stolen struct {
	pid           int
	master, lockd *ipc.Conn
}

// workerPid is the pid of session worker index, as master last logged it.
func workerPid(t *testing.T, d *harness.Daemon, index int) int {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`session %d (?:ready|restarted) \(pid (\d+)\)`, index))
	pid := 0
	for _, l := range d.LogLines() {
		if m := re.FindStringSubmatch(l); m != nil {
			pid, _ = strconv.Atoi(m[1])
		}
	}
	if pid == 0 {
		t.Fatalf("no pid of session worker %d in the log", index)
	}
	return pid
}

// socketInodes maps the socket inodes of pid to its descriptors.
func socketInodes(t *testing.T, pid int) map[string]int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		fd, _ := strconv.Atoi(e.Name())
		out[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = fd
	}
	return out
}

// unixPeers maps each unix socket inode to its peer's, from ss(8).
func unixPeers(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command("ss", "-xaH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	peers := map[string]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		// u_seq ESTAB 0 0 * 123 * 124
		if len(f) >= 8 && f[0] == "u_seq" {
			peers[f[5]] = f[7]
		}
	}
	return peers
}

// steal stops session worker index and takes duplicates of its links to
// master and to lockd.
func steal(t *testing.T, d *harness.Daemon, index int) *stolen {
	t.Helper()
	pid := workerPid(t, d, index)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	mine := socketInodes(t, pid)
	masters := socketInodes(t, d.Pid())
	lockds := socketInodes(t, lockdPid(t, d))
	peers := unixPeers(t)
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	take := func(fd int) *ipc.Conn {
		n, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			t.Fatalf("pidfd_getfd %d of %d: %v", fd, pid, err)
		}
		f := os.NewFile(uintptr(n), "stolen")
		defer f.Close()
		c, err := ipc.NewConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	s := &stolen{pid: pid}
	for ino, fd := range mine {
		peer := peers[ino]
		if _, ok := masters[peer]; ok && peer != "" {
			s.master = take(fd)
		}
		if _, ok := lockds[peer]; ok && peer != "" {
			s.lockd = take(fd)
		}
	}
	if s.master == nil || s.lockd == nil {
		t.Fatalf("links of session worker %d (pid %d) not found: master %v, lockd %v", index, pid, s.master != nil, s.lockd != nil)
	}
	return s
}

// call sends a request on c and returns the reply to it.
func call(t *testing.T, c *ipc.Conn, typ ipc.Type, v any) any {
	t.Helper()
	const id = 0x7ffff001
	if err := c.Send(typ, id, false, v); err != nil {
		t.Fatalf("%v: %v", typ, err)
	}
	c.UnixConn().SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := c.Recv()
		if err != nil {
			t.Fatalf("reply to %v: %v", typ, err)
		}
		if m.Reply && m.ID == id {
			return m.Payload
		}
		m.Close()
	}
}

// liveSession is a greeted client on the session worker that got it, and
// its session id.
type liveSession struct {
	c      *harness.Client
	src    netip.AddrPort
	id     uint64
	worker int
}

func openSession(t *testing.T, s *setup, d *harness.Daemon) *liveSession {
	t.Helper()
	mark := d.Mark()
	c := harness.Dial(t, s.addr())
	c.Expect(220)
	src := netip.MustParseAddrPort(c.Conn().LocalAddr().String())
	line := d.WaitLogAfter(t, mark, regexp.MustCompile(`NEW .*src=`+regexp.QuoteMeta(src.String())+`, .*id=\d+`), 10*time.Second)
	id, _ := strconv.ParseUint(regexp.MustCompile(`id=(\d+)`).FindStringSubmatch(line)[1], 10, 64)
	line = d.WaitLogAfter(t, mark, regexp.MustCompile(fmt.Sprintf(`session \d+: \[%d\] connected to`, id)), 10*time.Second)
	worker, _ := strconv.Atoi(regexp.MustCompile(`session (\d+): \[`).FindStringSubmatch(line)[1])
	return &liveSession{c: c, src: src, id: id, worker: worker}
}

// nothingDone checks that no lock file, no action script run and no
// rate-limit file about the forged addresses exist.
func nothingDone(t *testing.T, s *setup) {
	t.Helper()
	for _, dir := range []string{s.lockDir(), s.rateDir()} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), "192.0.2.") || (dir == s.lockDir() && strings.Contains(e.Name(), "127.0.0.1")) {
				t.Errorf("%s/%s exists", dir, e.Name())
			}
		}
	}
	if envs := s.envs(t); len(envs) != 0 {
		t.Errorf("the action script ran: %v", envs)
	}
}

func TestWorkerForgeries(t *testing.T) {
	s := newSetup(t)
	// Six workers: each round kills one, and master restarts a worker
	// killed young with a growing delay.
	d := s.start(t, "session_workers 6", "lock_duration 3600", "lock_on virus,spam,ratelimit",
		"action_script "+s.script, "ratelimit_period 3600", "size_limit 1000000")
	// x stays on its worker for the whole test; each round's session
	// goes to another, one with fewer sessions.
	x := openSession(t, s, d)
	forged := netip.MustParseAddrPort("192.0.2.7:4321")

	type round struct {
		name string
		// send sends the forgery with the stolen worker w serving
		// session y; it returns the breach's rule (a regexp), or ""
		// when the forgery is only refused.
		send func(t *testing.T, w *stolen, y *liveSession) string
	}
	rounds := []round{
		{"found for an address not its session's", func(t *testing.T, w *stolen, y *liveSession) string {
			a := call(t, w.lockd, ipc.MsgFound, &ipc.Found{Event: config.LockVirus, ID: y.id, Client: forged, Detail: "Forged"}).(*ipc.Ack)
			if a.Err == "" {
				t.Errorf("found for %v accepted", forged)
			}
			return `client 192\.0\.2\.7:4321 is not session \d+'s`
		}},
		{"found for another worker's session", func(t *testing.T, w *stolen, y *liveSession) string {
			call(t, w.lockd, ipc.MsgFound, &ipc.Found{Event: config.LockVirus, ID: x.id, Client: x.src})
			return fmt.Sprintf(`request about session \d+, which is session worker %d's`, x.worker)
		}},
		{"found for a session master does not know", func(t *testing.T, w *stolen, y *liveSession) string {
			a := call(t, w.lockd, ipc.MsgFound, &ipc.Found{Event: config.LockSpam, ID: 1 << 50, Client: forged}).(*ipc.Ack)
			if !strings.Contains(a.Err, "not registered") {
				t.Errorf("found for an unknown session: %q", a.Err)
			}
			return ""
		}},
		{"policy for a session master does not know", func(t *testing.T, w *stolen, y *liveSession) string {
			a := call(t, w.lockd, ipc.MsgPolicy, &ipc.Policy{ID: 1 << 50, Client: forged, Take: []string{ipc.RateConnections}}).(*ipc.PolicyAnswer)
			if !strings.Contains(a.Err, "not registered") {
				t.Errorf("policy for an unknown session: %+v", a)
			}
			return ""
		}},
		{"oversized bytes delta", func(t *testing.T, w *stolen, y *liveSession) string {
			call(t, w.lockd, ipc.MsgPolicy, &ipc.Policy{ID: y.id, Client: y.src, Add: []ipc.Delta{{Name: ipc.RateBytes, N: 1 << 50}}})
			return `rate-limit delta bytes 1125899906842624 is more than one SMTP event gives`
		}},
		{"oversized recipients delta", func(t *testing.T, w *stolen, y *liveSession) string {
			call(t, w.lockd, ipc.MsgPolicy, &ipc.Policy{ID: y.id, Client: y.src, Add: []ipc.Delta{{Name: ipc.RateRecipients, N: 1000}}})
			return `rate-limit delta recipients 1000`
		}},
		{"messages given back", func(t *testing.T, w *stolen, y *liveSession) string {
			call(t, w.lockd, ipc.MsgPolicy, &ipc.Policy{ID: y.id, Client: y.src, Add: []ipc.Delta{{Name: ipc.RateMessages, N: -1}}})
			return `rate-limit delta messages -1 is more than one SMTP event gives`
		}},
		{"unknown close cause", func(t *testing.T, w *stolen, y *liveSession) string {
			w.master.Send(ipc.MsgSessionEnd, 1, false, &ipc.SessionEnd{ID: y.id, By: "quit\nsmtp-gated: CLOSE by=forged"})
			return `unknown close cause`
		}},
		{"end of another worker's session", func(t *testing.T, w *stolen, y *liveSession) string {
			w.master.Send(ipc.MsgSessionEnd, 1, false, &ipc.SessionEnd{ID: x.id, By: ipc.CloseQuit})
			return fmt.Sprintf(`end of session %d, which is not its own`, x.id)
		}},
		{"ident of another worker's session", func(t *testing.T, w *stolen, y *liveSession) string {
			w.master.Send(ipc.MsgIdentQuery, 1, false, &ipc.IdentQuery{ID: x.id, Ident: "root"})
			return fmt.Sprintf(`ident of session %d, which is session %d's`, x.id, x.worker)
		}},
		{"another worker's status rows", func(t *testing.T, w *stolen, y *liveSession) string {
			answerSessions(t, s, w, []ipc.SessionRow{{ID: x.id, State: ipc.StateData}})
			return fmt.Sprintf(`status row for session %d, which is session %d's`, x.id, x.worker)
		}},
		{"unknown session state", func(t *testing.T, w *stolen, y *liveSession) string {
			answerSessions(t, s, w, []ipc.SessionRow{{ID: y.id, State: "data\x1b[2J"}})
			return `unknown session state`
		}},
	}
	for _, r := range rounds {
		t.Run(strings.ReplaceAll(r.name, " ", "_"), func(t *testing.T) {
			y := openSession(t, s, d)
			defer y.c.Close()
			if y.worker == x.worker {
				t.Fatalf("both sessions on worker %d", x.worker)
			}
			mark := d.Mark()
			w := steal(t, d, y.worker)
			rule := r.send(t, w, y)
			if rule == "" {
				syscall.Kill(w.pid, syscall.SIGCONT)
				nothingDone(t, s)
				return
			}
			d.WaitLogAfter(t, mark, regexp.MustCompile(fmt.Sprintf(`session %d \(pid %d\) broke the rules: .*%s.*: killing it`, y.worker, w.pid, rule)), 10*time.Second)
			d.WaitLogAfter(t, mark, regexp.MustCompile(fmt.Sprintf(`session %d restarted \(pid \d+\)`, y.worker)), 15*time.Second)
			nothingDone(t, s)
		})
	}
	// The forged bytes were not counted, nor anything else of the
	// forgeries: 127.0.0.1 has its connections only.
	if n, _ := s.counter(t, "127.0.0.1", "bytes"); n != 0 {
		t.Errorf("bytes of 127.0.0.1: %d, want 0", n)
	}
	// Worker 0 and its session were never touched.
	x.c.Cmd("NOOP", 250)
	x.c.Quit()
}

// answerSessions waits for master's status query on the stolen link
// (asked by `smtpgatectl sessions`) and answers it with rows.
func answerSessions(t *testing.T, s *setup, w *stolen, rows []ipc.SessionRow) string {
	t.Helper()
	harness.CtlBinary(t) // built before the clock starts
	out := make(chan string, 1)
	go func() {
		_, text := s.ctl(t, nil, "sessions")
		out <- text
	}()
	w.master.UnixConn().SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, err := w.master.Recv()
		if err != nil {
			t.Fatalf("waiting for master's status query: %v", err)
		}
		if m.Type == ipc.MsgPing { // the stolen worker stays alive
			w.master.Send(ipc.MsgPong, m.ID, true, &ipc.Pong{})
		}
		if m.Type == ipc.MsgSessions {
			if err := w.master.Send(ipc.MsgSessionList, m.ID, true, &ipc.SessionList{Rows: rows}); err != nil {
				t.Fatal(err)
			}
			break
		}
		m.Close()
	}
	select {
	case text := <-out:
		return text
	case <-time.After(15 * time.Second):
		t.Fatal("smtpgatectl sessions did not end")
		return ""
	}
}

// rawBytes reports whether s holds a byte the escaping would have written
// as \xNN (a newline ends each of the lines given).
func rawBytes(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\n') || c >= 0x7f {
			return true
		}
	}
	return false
}

// Strings a client or a worker chose reach the log, the status table, the
// statistics and the action script escaped: no \r, newline, ESC or 8-bit
// byte of theirs is written as it is.
func TestWorkerStringsEscaped(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "session_workers 2", "log_helo on", "log_mail_from accepted,rejected",
		"lock_duration 3600", "lock_on virus", "action_script "+s.script)

	// A client: HELO and MAIL FROM with a bare CR or ESC are refused
	// whole (500) and logged without their bytes; with 8-bit bytes they
	// pass, and are logged escaped.
	c := harness.Dial(t, s.addr())
	c.Expect(220)
	c.Send("HELO evil\x1b[31m\rforged\xc3\xa9\r\n")
	c.Expect(500)
	c.Send("MAIL FROM:<a\x1b[2J\xffb@example.com>\r\n")
	c.Expect(500)
	c.Send("HELO evil\xc3\xa9\r\n")
	c.Reply()
	c.Send("MAIL FROM:<a\xffb@example.com>\r\n")
	c.Reply()
	c.Send("QUIT\r\n")
	c.Reply()
	c.Close()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=`), 10*time.Second)

	// A worker: a status row and a Found with such strings.
	x := openSession(t, s, d)
	defer x.c.Close()
	w := steal(t, d, x.worker)
	const ident = "bob\r\n\x1b[2Jroot\x00\xfe"
	const escaped = `bob\x0d\x0a\x1b[2Jroot\x00\xfe`
	table := answerSessions(t, s, w, []ipc.SessionRow{{ID: x.id, State: ipc.StateHelo, Ident: ident}})
	if !strings.Contains(table, escaped) || rawBytes(table) {
		t.Errorf("smtpgatectl sessions:\n%q", table)
	}
	a := call(t, w.lockd, ipc.MsgFound, &ipc.Found{Event: config.LockVirus, ID: x.id, Client: x.src,
		Detail: "Virus\x1b[2J\nLOCK 10.0.0.1", Helo: "evil\r\n\x1b]0;title\x07", MailFrom: "a\x1b@b\xff"}).(*ipc.Ack)
	if a.Err != "" {
		t.Fatalf("a Found of the worker's own session refused: %s", a.Err)
	}
	env := s.waitEnvs(t, 1)[0]
	if env["HELO"] != `evil\x0d\x0a\x1b]0;title\x07` || env["MAIL_FROM"] != `a\x1b@b\xff` {
		t.Errorf("action script environment: HELO %q, MAIL_FROM %q", env["HELO"], env["MAIL_FROM"])
	}
	syscall.Kill(w.pid, syscall.SIGCONT)

	stats := s.mustCtl(t, "stats")
	dump := s.mustCtl(t, "dump")
	for name, text := range map[string]string{"stats": stats, "dump": dump} {
		if rawBytes(text) {
			t.Errorf("%s holds raw bytes:\n%q", name, text)
		}
	}
	log := d.Log()
	if rawBytes(log) {
		for _, l := range d.LogLines() {
			if rawBytes(l) {
				t.Errorf("log line with raw bytes: %q", l)
			}
		}
	}
	for _, want := range []string{`helo=evil\xc3\xa9`, `MAIL FROM <a\xffb@example.com>`, "command line refused: control byte 0x1b"} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q in the log", want)
		}
	}
}
