// Package differential sends command lines spelled in many ways (control
// bytes as separators and inside the verb, blanks, case, line ends, 8-bit
// bytes) both to a real Postfix directly and through smtp-gated (with a
// real clamd behind it) to the same Postfix, and checks that the proxy
// never reads a line otherwise than Postfix does in a way that matters:
// a line Postfix takes for DATA or BDAT is scanned or refused by the
// proxy, never relayed blind, and no EICAR message is ever delivered.
//
//	go test ./test/differential -v
package differential

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// The proxy's own replies carry these texts, which no Postfix reply has.
const (
	proxyName   = "gate.differential.test"
	textProto   = "proxy-protocol-error"
	textUnimpl  = "proxy-not-implemented"
	textHelo    = "proxy-refused-helo"
	textMail    = "proxy-refused-sender"
	textRcpt    = "proxy-refused-recipient"
	textVirus   = "proxy-found-a-virus"
	sinkRcpt    = "sink@example.org"
	discardRcpt = "probe@discard.invalid"
)

// reply is one SMTP reply.
type reply struct {
	code  int
	lines []string
}

func (r reply) text() string { return strings.Join(r.lines, "\n") }

// fromProxy reports a reply of the proxy's own with the given text.
func (r reply) fromProxy(text string) bool {
	return strings.Contains(r.text(), proxyName+" "+text)
}

// verb is one verb of the table, with its argument, the commands that
// put a session in the state where it is meaningful, how Postfix's reply
// shows it read the verb, and how the proxy's behaviour shows it did
// (nil: the proxy passes the verb on without any sign of its own).
type verb struct {
	name     string
	arg      string
	pre      []string
	postfix  func(reply) bool
	proxySaw func(reply) bool
}

// chunk is the BDAT chunk: a message holding EICAR, with token.
func chunk(token string) []byte {
	return fmt.Appendf(nil, "Subject: %s\r\n\r\n%s\r\n", token, harness.EICAR())
}

// chunkLen is the length of every chunk (tokens have one length).
var chunkLen = len(chunk(tokenFor("0123456789abcdef", 0)))

func tokenFor(run string, i int) string { return fmt.Sprintf("%s-%05d", run, i) }

var authPlain = "PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00testuser@peers.localdomain\x00testpass"))

var verbs = []*verb{
	{name: "DATA", pre: []string{"EHLO", "MAIL", "RCPT"},
		postfix: func(r reply) bool { return r.code == 354 }},
	// proxySaw for DATA is the virus verdict after the body (see run).
	{name: "BDAT", arg: fmt.Sprintf("%d LAST", chunkLen), pre: []string{"EHLO", "MAIL", "RCPT"},
		postfix:  func(r reply) bool { return r.code == 250 },
		proxySaw: func(r reply) bool { return r.fromProxy(textUnimpl) }},
	{name: "MAIL", arg: "FROM:<refuse-mail@example.com>", pre: []string{"EHLO"},
		postfix:  func(r reply) bool { return r.code == 250 && strings.Contains(r.text(), "2.1.0") },
		proxySaw: func(r reply) bool { return r.fromProxy(textMail) }},
	{name: "RCPT", arg: "TO:<refuse-rcpt@example.org>", pre: []string{"EHLO", "MAIL"},
		postfix:  func(r reply) bool { return r.code == 250 && strings.Contains(r.text(), "2.1.5") },
		proxySaw: func(r reply) bool { return r.fromProxy(textRcpt) }},
	{name: "EHLO", arg: "refuse-helo.example",
		postfix:  func(r reply) bool { return r.code == 250 && len(r.lines) > 1 },
		proxySaw: func(r reply) bool { return r.fromProxy(textHelo) }},
	{name: "HELO", arg: "refuse-helo.example",
		postfix:  func(r reply) bool { return r.code == 250 && len(r.lines) == 1 },
		proxySaw: func(r reply) bool { return r.fromProxy(textHelo) }},
	{name: "XCLIENT", arg: "NAME=spoofed.example", pre: []string{"EHLO"},
		postfix:  func(r reply) bool { return r.code == 220 },
		proxySaw: func(r reply) bool { return r.fromProxy(textUnimpl) }},
	{name: "STARTTLS", pre: []string{"EHLO"},
		postfix:  func(r reply) bool { return r.code == 220 },
		proxySaw: func(r reply) bool { return r.fromProxy(textUnimpl) }},
	{name: "AUTH", arg: authPlain, pre: []string{"EHLO"},
		postfix: func(r reply) bool { return r.code == 235 || r.code == 334 }},
	{name: "RSET", pre: []string{"EHLO", "MAIL"},
		postfix: func(r reply) bool { return r.code == 250 }},
	{name: "NOOP", pre: []string{"EHLO"},
		postfix: func(r reply) bool { return r.code == 250 }},
	{name: "QUIT", pre: []string{"EHLO"},
		// 221 2.7.0 is Postfix hanging up on a forbidden command (a
		// header line sent as one).
		postfix: func(r reply) bool { return r.code == 221 && strings.Contains(r.text(), "2.0.0") }},
}

// spelling is one way to write a verb's command line.
type spelling struct {
	v    *verb
	what string
	line []byte
}

// spellings makes the table: for every verb, every C0 control and DEL
// after the verb, inside it and (the white space ones) before it; blanks,
// case and line ends; 8-bit bytes.
func spellings() []spelling {
	var all []spelling
	for _, v := range verbs {
		seen := map[string]bool{}
		add := func(what string, parts ...string) {
			line := strings.Join(parts, "")
			if !seen[line] { // "DATA\x00\r\n" is two of the spellings
				seen[line] = true
				all = append(all, spelling{v, what, []byte(line)})
			}
		}
		arg := func(sep string) string {
			if v.arg == "" {
				return ""
			}
			return sep + v.arg
		}
		n := v.name
		var controls []byte
		for c := byte(0); c < 0x20; c++ {
			controls = append(controls, c)
		}
		controls = append(controls, 0x7f)
		for _, c := range controls {
			b := string([]byte{c})
			if v.arg == "" {
				add(fmt.Sprintf("0x%02x after the verb", c), n, b, "\r\n")
			} else {
				add(fmt.Sprintf("0x%02x after the verb", c), n, b, v.arg, "\r\n")
			}
			add(fmt.Sprintf("0x%02x inside the verb", c), n[:2], b, n[2:], arg(" "), "\r\n")
		}
		for _, c := range []byte{0x00, '\t', '\n', 0x0b, 0x0c, '\r'} {
			add(fmt.Sprintf("0x%02x before the verb", c), string([]byte{c}), n, arg(" "), "\r\n")
		}
		add("0x00 before the line end", n, arg(" "), "\x00\r\n")
		add("canonical", n, arg(" "), "\r\n")
		add("lower case", strings.ToLower(n), arg(" "), "\r\n")
		add("mixed case", mixed(n), arg(" "), "\r\n")
		add("leading space", " ", n, arg(" "), "\r\n")
		add("leading spaces and tab", "  \t", n, arg(" "), "\r\n")
		add("trailing space", n, arg(" "), " \r\n")
		add("trailing tab", n, arg(" "), "\t\r\n")
		add("tab separator", n, arg("\t"), "\t\r\n")
		add("several spaces", n, arg("    "), "\r\n")
		add("space tab space", n, arg(" \t "), "\r\n")
		add("bare LF", n, arg(" "), "\n")
		add("CR CR LF", n, arg(" "), "\r\r\n")
		add("0xa0 after the verb", n, "\xa0", v.arg, "\r\n")
		add("0x85 after the verb", n, "\x85", v.arg, "\r\n")
		add("UTF-8 NBSP after the verb", n, "\xc2\xa0", v.arg, "\r\n")
		add("8-bit inside the verb", n[:2], "\xc3\xa9", n[2:], arg(" "), "\r\n")
		add("8-bit argument", n, arg(" "), " \xc3\xa9\r\n")
		add("BOM before the verb", "\xef\xbb\xbf", n, arg(" "), "\r\n")
	}
	return all
}

func mixed(s string) string {
	b := []byte(strings.ToLower(s))
	for i := 0; i < len(b); i += 2 {
		b[i] = s[i]
	}
	return string(b)
}

// outcome is what one session showed.
type outcome struct {
	replies []reply // the replies to the spelled line (and the chunk)
	body    *reply  // DATA: the reply after the body
	err     error
}

// read reports whether Postfix read the line as its verb: one of the
// replies shows it.
func (o *outcome) read(v *verb) bool {
	for _, r := range o.replies {
		if v.postfix(r) {
			return true
		}
	}
	return false
}

func (o *outcome) any(f func(reply) bool) bool {
	for _, r := range o.replies {
		if f(r) {
			return true
		}
	}
	return false
}

// refused: the proxy answered a line of it as a protocol error (the
// line itself, or a 354 to something else than DATA).
func (o *outcome) refused() bool {
	return o.any(func(r reply) bool { return r.fromProxy(textProto) })
}

// queued: Postfix accepted a message (a body or a chunk).
func (o *outcome) queued() bool {
	if o.body != nil && o.body.code == 250 {
		return true
	}
	return o.any(func(r reply) bool { return r.code == 250 && strings.Contains(r.text(), "queued") })
}

// scanned: the proxy gave its virus verdict on the body.
func (o *outcome) scanned() bool { return o.body != nil && o.body.fromProxy(textVirus) }

const ioTimeout = 10 * time.Second

// session runs one spelling against addr: the verb's pre-commands, the
// line (and the chunk after a BDAT line), the replies to every line sent,
// and the body after a 354 when body is set. rcpt is the recipient of
// the pre-command RCPT.
func session(addr string, sp spelling, rcpt, token string, body bool) (o outcome) {
	conn, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		o.err = err
		return o
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(ioTimeout))
	br := bufio.NewReader(conn)
	if r, err := readReply(br); err != nil || r.code != 220 {
		o.err = fmt.Errorf("greeting %v: %v", r, err)
		return o
	}
	for _, p := range sp.v.pre {
		cmd := map[string]string{
			"EHLO": "EHLO client.example",
			"MAIL": "MAIL FROM:<sender@example.com>",
			"RCPT": "RCPT TO:<" + rcpt + ">",
		}[p]
		if _, err := conn.Write([]byte(cmd + "\r\n")); err != nil {
			o.err = err
			return o
		}
		if r, err := readReply(br); err != nil || r.code != 250 {
			o.err = fmt.Errorf("%s: %v %v", cmd, r, err)
			return o
		}
	}
	out := sp.line
	if sp.v.name == "BDAT" {
		out = append(append([]byte(nil), out...), chunk(token)...)
	}
	if _, err := conn.Write(out); err != nil {
		o.err = err
		return o
	}
	// One reply for each line sent, unless one of them leaves the
	// command dialogue: 354 (a body follows), 220 (STARTTLS, or the new
	// greeting of XCLIENT), 221, 334/235 (AUTH), a BDAT chunk taken.
	for n := bytes.Count(out, []byte("\n")); n > 0; n-- {
		r, err := readReply(br)
		if err != nil {
			if !errors.Is(err, errClosed) {
				o.err = fmt.Errorf("reply %d: %w", len(o.replies)+1, err)
			}
			return o
		}
		o.replies = append(o.replies, r)
		switch {
		case r.code == 354:
			if body {
				conn.Write(harness.DotStuff(harness.VirusMessage("sender@example.com", rcpt, token)))
				b, err := readReply(br)
				if err != nil && !errors.Is(err, errClosed) {
					o.err = fmt.Errorf("reply to the body: %w", err)
				}
				if err == nil {
					o.body = &b
				}
			}
			return o
		case r.code == 220 || r.code == 221 || r.code == 235 || r.code == 334:
			return o
		case sp.v.name == "BDAT" && r.code == 250:
			return o
		}
	}
	conn.Write([]byte("QUIT\r\n"))
	return o
}

var errClosed = errors.New("connection closed")

func readReply(br *bufio.Reader) (reply, error) {
	var r reply
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if line == "" && len(r.lines) == 0 && (errors.Is(err, io.EOF) || isReset(err)) {
				return r, errClosed
			}
			return r, err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return r, fmt.Errorf("bad reply line %q", line)
		}
		var code int
		if _, err := fmt.Sscanf(line[:3], "%d", &code); err != nil {
			return r, fmt.Errorf("bad reply line %q", line)
		}
		r.code = code
		r.lines = append(r.lines, line)
		if len(line) == 3 || line[3] != '-' {
			return r, nil
		}
	}
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

// TestDifferentialPostfix is the differential test. It needs root and
// the peers (Postfix, clamd); without them it skips, or fails with
// SMTPGATED_REQUIRE_PEERS=1.
func TestDifferentialPostfix(t *testing.T) {
	pf := harness.Postfix(t)
	clamd := harness.Clamd(t)
	dir := harness.DaemonDir(t, "sgdiff-")
	port := harness.FreePort(t)
	harness.StartDaemon(t, fmt.Sprintf(`mode fixed+xclient
fixed_server 127.0.0.1
fixed_server_port %d
bind_address 127.0.0.1
port %d
proxy_name %s
pidfile %[4]s/smtp-gated.pid
control_socket %[4]s/control.sock
statefile %[4]s/state
spool_path %[4]s/spool
lock_path %[4]s
ratelimit_path %[4]s
session_workers 2
max_connections 128
max_per_host 128
max_load 0
lock_on never
antivirus_type clamd
antivirus_path %[5]s
forbid_starttls yes
regex_reject_helo ^refuse-helo\.
regex_reject_mail_from ^refuse-mail@
regex_reject_rcpt_to ^refuse-rcpt@
msg_proto_error %[6]s
msg_unimpl_command %[7]s
msg_regex_helo %[8]s
msg_regex_mail_from %[9]s
msg_regex_rcpt_to %[10]s
msg_virus_found %[11]s
`, pf.Port, port, proxyName, dir, clamd.Socket, textProto, textUnimpl, textHelo, textMail, textRcpt, textVirus))
	proxy := fmt.Sprintf("127.0.0.1:%d", port)
	run := harness.Token(t)

	sps := spellings()
	if len(sps) < 200 {
		t.Fatalf("%d spellings, want at least 200", len(sps))
	}
	direct := make([]outcome, len(sps))
	viaProxy := make([]outcome, len(sps))
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				token := tokenFor(run, i)
				direct[i] = session(pf.Addr, sps[i], discardRcpt, token, false)
				viaProxy[i] = session(proxy, sps[i], sinkRcpt, token, true)
			}
		}()
	}
	for i := range sps {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	t.Logf("%d spellings of %d verbs, directly and through the proxy, in %v", len(sps), len(verbs), time.Since(start).Round(time.Millisecond))

	var (
		bodyVerbs, bodyRead, bodyRefused, bodyScanned, blind, queued int
		readAll, readCtl, refused, saw, disagree, unobserved         int
		dangerous                                                    []string
	)
	for i, sp := range sps {
		d, p := &direct[i], &viaProxy[i]
		if d.err != nil || p.err != nil {
			t.Errorf("%s %s %q: directly: %v; through the proxy: %v", sp.v.name, sp.what, sp.line, d.err, p.err)
			continue
		}
		read := d.read(sp.v)
		if sp.what == "canonical" {
			if !read {
				t.Errorf("Postfix does not read the canonical %q as %s: %v", sp.line, sp.v.name, d.replies)
			}
			if sp.v.proxySaw != nil && !p.any(sp.v.proxySaw) || sp.v.name == "DATA" && !p.scanned() {
				t.Errorf("the proxy shows no sign of reading the canonical %q as %s: %v %v", sp.line, sp.v.name, p.replies, p.body)
			}
		}
		if read {
			readAll++
		}
		isBody := sp.v.name == "DATA" || sp.v.name == "BDAT"
		if read && bytes.ContainsFunc(bytes.TrimRight(sp.line, "\r\n"), func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			readCtl++
			if isBody {
				dangerous = append(dangerous, fmt.Sprintf("%q", sp.line))
			}
		}
		if isBody {
			bodyVerbs++
			if p.queued() {
				queued++
				t.Errorf("%s %s %q: a message was queued through the proxy: %v, body %v", sp.v.name, sp.what, sp.line, p.replies, p.body)
			}
		}
		if !read {
			continue
		}
		if isBody {
			bodyRead++
		}
		switch {
		case p.refused():
			refused++
			if isBody {
				bodyRefused++
			}
		case sp.v.name == "DATA" && p.scanned():
			bodyScanned++
		case sp.v.proxySaw != nil && p.any(sp.v.proxySaw):
			saw++
			if isBody {
				bodyRefused++ // BDAT: refused by the proxy as BDAT
			}
		case isBody:
			blind++
			t.Errorf("%s %s %q: Postfix reads %s (%v), the proxy relayed it blind: %v, body %v",
				sp.v.name, sp.what, sp.line, sp.v.name, d.replies, p.replies, p.body)
		case sp.v.proxySaw != nil:
			disagree++
			t.Errorf("%s %s %q: Postfix reads %s (%v), the proxy read it otherwise: %v",
				sp.v.name, sp.what, sp.line, sp.v.name, d.replies, p.replies)
		default:
			unobserved++
		}
	}
	t.Logf("Postfix reads %d of the lines as their verb: %d refused by the proxy, %d read by it as that verb, %d scanned (DATA), %d relayed as another verb, %d passed on (no sign of the proxy's reading for AUTH, RSET, NOOP, QUIT)",
		readAll, refused, saw, bodyScanned, disagree+blind, unobserved)
	t.Logf("Postfix reads %d lines holding a control byte as their verb", readCtl)
	t.Logf("DATA/BDAT: %d spellings, %d read by Postfix as DATA/BDAT: %d refused by the proxy, %d scanned, %d relayed blind; %d messages queued through the proxy",
		bodyVerbs, bodyRead, bodyRefused, bodyScanned, blind, queued)
	t.Logf("DATA/BDAT lines with a control byte that Postfix reads as DATA/BDAT: %s", strings.Join(dangerous, " "))
	if readCtl == 0 {
		t.Errorf("Postfix read no line with a control byte as its verb: the table no longer tests what it is for")
	}
	if disagree > 0 {
		t.Errorf("%d spellings read as another verb by the proxy than by Postfix", disagree)
	}

	// Delivery: a clean message through the proxy after all the others
	// is delivered; no message of the run's EICAR bodies is.
	control := harness.Token(t)
	c := harness.Dial(t, proxy)
	c.Expect(220)
	c.Cmd("EHLO client.example", 250)
	c.SendMail("sender@example.com", []string{sinkRcpt}, harness.Message("sender@example.com", sinkRcpt, control))
	c.Quit()
	pf.WaitDelivered(t, control, 30*time.Second)
	delivered := 0
	for _, m := range pf.Messages() {
		b, err := os.ReadFile(m)
		if err == nil && bytes.Contains(b, []byte(run)) {
			delivered++
			t.Errorf("an EICAR message of the run was delivered: %s", filepath.Base(m))
		}
	}
	t.Logf("EICAR messages delivered: %d", delivered)
}
