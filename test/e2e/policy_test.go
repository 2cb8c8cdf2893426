package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// Spam and spool decisions as 1.4 made them, against the real Postfix,
// clamd and spamd.

// Spam is refused only when lock_on includes spam (1.4's FAQ: "Spammers
// don't get locked? set lock_on spam"). Otherwise GTUBE is logged with its
// score, counted, and delivered.
func TestSpamPassesWithoutLockOnSpam(t *testing.T) {
	spamd := harness.Spamd(t)
	s := newSetup(t)
	d := s.start(t, "antispam_type spamassassin", "antispam_path "+spamd.Addr, "spam_max_size 1000000", "spam_max_load 0",
		"lock_on virus")
	c := greeted(t, s.addr())
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.SpamMessage("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
	d.WaitLog(t, regexp.MustCompile(`is spam \(score \d+\.\d\): passed, lock_on lacks spam`), 10*time.Second)
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit, `), 10*time.Second)
	// Counted: master has the session's end once its CLOSE line is out;
	// the status is read after it.
	out, err := exec.Command(harness.CtlBinary(t), "-s", filepath.Join(s.dir, "control.sock"), "stats", "--prometheus").CombinedOutput()
	if err != nil {
		t.Fatalf("smtpgatectl stats: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `smtpgated_found_total{kind="spam"} 1`+"\n") {
		t.Errorf("spam not counted:\n%s", out)
	}
}

// silentSpamd accepts connections and reads them, never answering: a
// spamd that is overloaded.
func silentSpamd(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go func() {
				b := make([]byte, 4096)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// The antispam scanner only advises: spamd down, or silent until
// timeout_spam, never refuses a message; the virus scan still refuses
// EICAR. (An antivirus failure is 451: TestScannerDown.)
func TestSpamdAdvisory(t *testing.T) {
	clamd := harness.Clamd(t)
	for _, name := range []string{"down", "silent"} {
		t.Run(name, func(t *testing.T) {
			s := newSetup(t)
			spamd := filepath.Join(s.dir, "no-spamd.sock")
			if name == "silent" {
				spamd = silentSpamd(t)
			}
			d := s.start(t, "antivirus_type clamd", "antivirus_path "+clamd.Socket,
				"antispam_type spamassassin", "antispam_path "+spamd, "spam_max_size 1000000", "spam_max_load 0",
				"timeout_spam 2", "lock_on virus,spam")
			c := greeted(t, s.addr())
			token := harness.Token(t)
			c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
			// Spam too passes unnoticed: its scanner is not there.
			spam := harness.Token(t)
			c.SendMail("a@example.com", []string{"b@example.org"}, harness.SpamMessage("a@example.com", "b@example.org", spam))
			c.Cmd("MAIL FROM:<a@example.com>", 250)
			c.Cmd("RCPT TO:<b@example.org>", 250)
			c.Cmd("DATA", 354)
			virus := harness.Token(t)
			c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", virus))))
			c.Expect(550)
			c.Quit()
			s.pf.WaitDelivered(t, token, 30*time.Second)
			s.pf.WaitDelivered(t, spam, 30*time.Second)
			d.WaitLog(t, regexp.MustCompile(`spamd: .*: passed, the antispam scan only advises`), 10*time.Second)
			d.WaitLog(t, regexp.MustCompile(`CLOSE by=virus, `), 10*time.Second)
			s.pf.NotDelivered(t, virus, 2*time.Second)
		})
	}
}

// spoolFiles lists what is in the spool directory.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// emptySpool removes what is in the spool directory.
func emptySpool(t *testing.T, dir string) {
	for _, f := range spoolFiles(t, dir) {
		os.Remove(f)
	}
}

// bigMessage is a message of about n bytes carrying token.
func bigMessage(token string, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <a@example.com>\r\nTo: <b@example.org>\r\nSubject: big %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\n", token, token)
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for b.Len() < n {
		b.WriteString(line)
	}
	fmt.Fprintf(&b, "end of %s\r\n", token)
	return b.Bytes()
}

// A spool file exists only while a scanner will read it, and holds at most
// spool_max_size = max(scan_max_size, spam_max_size) bytes: a 5 MB message
// through a spool directory of 1 MiB is delivered when no scanner would
// read it (none configured, scan_max_size 0, or the message over
// scan_max_size), and nothing stays in the spool.
func TestSpoolOnlyForScanners(t *testing.T) {
	clamd := harness.Clamd(t)
	spool := smallSpool(t)
	for _, tc := range []struct {
		name   string
		config []string
		virus  bool // a small EICAR message is still refused
	}{
		{"no scanner", []string{"antivirus_type off", "antispam_type off"}, false},
		{"scan_max_size 0", []string{"antivirus_type clamd", "antivirus_path " + clamd.Socket, "scan_max_size 0"}, false},
		{"over scan_max_size", []string{"antivirus_type clamd", "antivirus_path " + clamd.Socket, "scan_max_size 500000"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { emptySpool(t, spool) }) // spool_leave_on always
			s := newSetup(t)
			d := s.start(t, append([]string{"spool_path " + spool, "spool_leave_on always"}, tc.config...)...)
			c := greeted(t, s.addr())
			token := harness.Token(t)
			c.SendMail("a@example.com", []string{"b@example.org"}, bigMessage(token, 5<<20))
			if left := spoolFiles(t, spool); len(left) != 0 {
				t.Errorf("spool files after a message no scanner reads: %v", left)
			}
			if tc.virus {
				c.Cmd("MAIL FROM:<a@example.com>", 250)
				c.Cmd("RCPT TO:<b@example.org>", 250)
				c.Cmd("DATA", 354)
				c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t)))))
				c.Expect(550)
				c.Quit()
				d.WaitLog(t, regexp.MustCompile(`CLOSE by=virus, `), 10*time.Second)
			} else {
				c.Quit()
				d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit, `), 10*time.Second)
			}
			s.pf.WaitDelivered(t, token, 30*time.Second)
		})
	}
}

// A spool that cannot be written (the tmpfs is full: ENOSPC) is removed
// at once, whatever spool_leave_on says, so the disk recovers by itself:
// the message gets 451 and the next one is scanned and delivered. With
// ignore_errors the message passes unscanned.
func TestSpoolFull(t *testing.T) {
	clamd := harness.Clamd(t)
	spool := smallSpool(t)
	for _, tc := range []struct {
		name   string
		ignore bool
	}{{"451", false}, {"ignore_errors", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { emptySpool(t, spool) }) // spool_leave_on always
			s := newSetup(t)
			d := s.start(t, "spool_path "+spool, "spool_leave_on always,error", "antivirus_type clamd", "antivirus_path "+clamd.Socket,
				fmt.Sprintf("ignore_errors %v", tc.ignore))
			c := greeted(t, s.addr())
			token := harness.Token(t)
			c.Cmd("MAIL FROM:<a@example.com>", 250)
			c.Cmd("RCPT TO:<b@example.org>", 250)
			c.Cmd("DATA", 354)
			c.Send(string(harness.DotStuff(bigMessage(token, 5<<20))))
			if tc.ignore {
				c.Expect(250)
			} else {
				c.Expect(451)
			}
			d.WaitLog(t, regexp.MustCompile(`spool: write .*: no space left on device`), 10*time.Second)
			if left := spoolFiles(t, spool); len(left) != 0 {
				t.Errorf("spool files after the spool filled up: %v", left)
			}
			if tc.ignore {
				s.pf.WaitDelivered(t, token, 30*time.Second)
			} else {
				c.Quit()
				d.WaitLog(t, regexp.MustCompile(`CLOSE by=spool, `), 10*time.Second)
				s.pf.NotDelivered(t, token, 2*time.Second)
				c = greeted(t, s.addr())
			}
			// The disk recovered: the next message is scanned and
			// delivered, and the next virus refused.
			clean := harness.Token(t)
			c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", clean))
			c.Cmd("MAIL FROM:<a@example.com>", 250)
			c.Cmd("RCPT TO:<b@example.org>", 250)
			c.Cmd("DATA", 354)
			c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t)))))
			c.Expect(550)
			c.Quit()
			s.pf.WaitDelivered(t, clean, 30*time.Second)
			d.WaitLog(t, regexp.MustCompile(`CLOSE by=virus, `), 10*time.Second)
		})
	}
}
