package harness

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Client is a line-level SMTP client for tests. Every method that fails
// fails the test with t.Fatalf, so use a Client from the test's own
// goroutine; Reply is the one method that returns an error instead.
// Dial does not read the greeting: call Expect(220) (a test of early talkers
// or early rejects wants to choose).
type Client struct {
	t       testing.TB
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

// DefaultTimeout bounds each read and write of a Client.
const DefaultTimeout = 15 * time.Second

// Dial connects to addr ("host:port"); the connection is closed by
// t.Cleanup if the test does not close it.
func Dial(t testing.TB, addr string) *Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, DefaultTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{t: t, conn: conn, r: bufio.NewReaderSize(conn, 64<<10), timeout: DefaultTimeout}
}

// Conn returns the underlying connection (after StartTLS, the TLS one).
func (c *Client) Conn() net.Conn { return c.conn }

// SetTimeout changes the per-read and per-write deadline (DefaultTimeout).
func (c *Client) SetTimeout(d time.Duration) { c.timeout = d }

// Close closes the connection.
func (c *Client) Close() { c.conn.Close() }

// Send writes raw exactly as given: no CRLF is added.
func (c *Client) Send(raw string) {
	c.t.Helper()
	c.write([]byte(raw))
}

func (c *Client) write(b []byte) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("smtp write %q: %v", abbrev(b), err)
	}
}

// Reply reads one complete reply, multi-line included ("250-a", "250 b").
// text is the reply's lines as received, without CRLF, joined with "\n".
func (c *Client) Reply() (code int, text string, err error) {
	var lines []string
	for {
		c.conn.SetReadDeadline(time.Now().Add(c.timeout))
		line, err := c.r.ReadString('\n')
		if err != nil {
			if line != "" {
				lines = append(lines, line)
			}
			return 0, strings.Join(lines, "\n"), fmt.Errorf("reading reply: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 3 || (len(line) > 3 && line[3] != '-' && line[3] != ' ') {
			return 0, strings.Join(lines, "\n"), fmt.Errorf("malformed reply line %q", line)
		}
		n, err := strconv.Atoi(line[:3])
		if err != nil || n < 200 || n > 599 {
			return 0, strings.Join(lines, "\n"), fmt.Errorf("malformed reply code in %q", line)
		}
		if code != 0 && n != code {
			return 0, strings.Join(lines, "\n"), fmt.Errorf("reply code changes inside a multi-line reply: %q", line)
		}
		code = n
		if len(line) == 3 || line[3] == ' ' {
			return code, strings.Join(lines, "\n"), nil
		}
	}
}

// Expect reads one complete reply and fails the test unless its code is
// code. It returns the reply's text (see Reply).
func (c *Client) Expect(code int) string {
	c.t.Helper()
	got, text, err := c.Reply()
	if err != nil {
		c.t.Fatalf("want a %d reply: %v (got %q)", code, err, text)
	}
	if got != code {
		c.t.Fatalf("got reply %q, want code %d", text, code)
	}
	return text
}

// Cmd sends line followed by CRLF and expects a reply with code.
func (c *Client) Cmd(line string, code int) string {
	c.t.Helper()
	c.write([]byte(line + "\r\n"))
	return c.Expect(code)
}

// ExpectClosed fails the test unless the server closes the connection
// without sending anything more.
func (c *Client) ExpectClosed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	b, err := c.r.ReadByte()
	if err == nil {
		rest, _ := c.r.Peek(c.r.Buffered())
		c.t.Fatalf("want the connection closed, got data %q", append([]byte{b}, rest...))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("want the connection closed, still open after %v", c.timeout)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf("want the connection closed: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset by peer")
}

// Ehlo sends EHLO name, expects 250 and returns the extension lines (the
// reply's lines after the first, without "250-"/"250 "), e.g.
// ["PIPELINING", "SIZE 52428800", "STARTTLS", ...].
func (c *Client) Ehlo(name string) []string {
	c.t.Helper()
	text := c.Cmd("EHLO "+name, 250)
	lines := strings.Split(text, "\n")
	var exts []string
	for _, l := range lines[1:] {
		if len(l) > 4 {
			exts = append(exts, l[4:])
		}
	}
	return exts
}

// HasExt reports whether the EHLO extension list has keyword (case
// insensitive), alone or with parameters ("AUTH" matches "AUTH PLAIN LOGIN").
func HasExt(exts []string, keyword string) bool {
	for _, e := range exts {
		f := strings.Fields(e)
		if len(f) > 0 && strings.EqualFold(f[0], keyword) {
			return true
		}
	}
	return false
}

// StartTLS sends STARTTLS, expects 220 and runs the TLS handshake; the
// Client then talks TLS. A nil cfg skips certificate verification.
// Send EHLO again afterwards (RFC 3207).
func (c *Client) StartTLS(cfg *tls.Config) {
	c.t.Helper()
	c.Cmd("STARTTLS", 220)
	if c.r.Buffered() > 0 {
		c.t.Fatalf("server sent data after 220 to STARTTLS, before the TLS handshake")
	}
	if cfg == nil {
		cfg = &tls.Config{InsecureSkipVerify: true}
	}
	tc := tls.Client(c.conn, cfg)
	tc.SetDeadline(time.Now().Add(c.timeout))
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReaderSize(tc, 64<<10)
}

// AuthPlain sends AUTH PLAIN with an initial response and expects code
// (235 on success, 535 for a wrong password).
func (c *Client) AuthPlain(user, pass string, code int) string {
	c.t.Helper()
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	return c.Cmd("AUTH PLAIN "+resp, code)
}

// SendMail runs one mail transaction on a greeted session: MAIL FROM:<from>
// (250), RCPT TO:<to> for each (250), DATA (354), the body dot-stuffed and
// terminated (250). It returns the final reply. The body's line endings are
// normalised to CRLF; to send exact bytes, use Send.
func (c *Client) SendMail(from string, to []string, body []byte) string {
	c.t.Helper()
	c.Cmd("MAIL FROM:<"+from+">", 250)
	for _, rcpt := range to {
		c.Cmd("RCPT TO:<"+rcpt+">", 250)
	}
	c.Cmd("DATA", 354)
	c.write(DotStuff(body))
	return c.Expect(250)
}

// SendMailPipelined is SendMail with PIPELINING (RFC 2920): MAIL, every RCPT
// and DATA go out in one write, then the replies are read in order (250 for
// each, 354 for DATA); the body follows and its 250 is returned.
func (c *Client) SendMailPipelined(from string, to []string, body []byte) string {
	c.t.Helper()
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + from + ">\r\n")
	for _, rcpt := range to {
		b.WriteString("RCPT TO:<" + rcpt + ">\r\n")
	}
	b.WriteString("DATA\r\n")
	c.write([]byte(b.String()))
	c.Expect(250)
	for range to {
		c.Expect(250)
	}
	c.Expect(354)
	c.write(DotStuff(body))
	return c.Expect(250)
}

// Quit sends QUIT and expects 221.
func (c *Client) Quit() {
	c.t.Helper()
	c.Cmd("QUIT", 221)
}

// DotStuff returns body as the DATA payload: line endings normalised to
// CRLF (a bare LF becomes CRLF), a dot doubled at the start of every line
// (RFC 5321 4.5.2), a final CRLF added if missing, then ".\r\n".
func DotStuff(body []byte) []byte {
	out := make([]byte, 0, len(body)+len(body)/32+8)
	for len(body) > 0 {
		line := body
		i := bytes.IndexByte(body, '\n')
		if i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			body = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > 0 && line[0] == '.' {
			out = append(out, '.')
		}
		out = append(out, line...)
		out = append(out, '\r', '\n')
	}
	return append(out, ".\r\n"...)
}

// Message builds a small RFC 5322 message whose Subject and body carry token.
func Message(from, to, token string) []byte {
	return fmt.Appendf(nil, "From: <%s>\r\nTo: <%s>\r\nSubject: test %s\r\nMessage-ID: <%s@test.invalid>\r\n\r\nbody of %s\r\n",
		from, to, token, token, token)
}

func abbrev(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// CloseSrc is a regular expression for the client fields of the CLOSE
// line of the session from src ("192.0.2.1:40000", "[::1]:40000"): as in
// 1.4, src= holds the address alone, and src_port= the port after it.
func CloseSrc(src string) string {
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return `\bsrc=` + regexp.QuoteMeta(src) + `(,|\s|$)`
	}
	return `\bsrc=` + regexp.QuoteMeta(ap.Addr().Unmap().String()) + `, .*\bsrc_port=` + strconv.Itoa(int(ap.Port())) + `,`
}
