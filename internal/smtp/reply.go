package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ErrBadReply is wrapped by every ReadReply error about what the MTA sent
// (as opposed to errors reading it).
var ErrBadReply = errors.New("malformed reply")

// MaxReplyLines bounds the lines of one reply. The MTA is whatever host the
// client connected to, so it is not trusted either: an endless run of
// "250-" lines must not grow memory without limit. Real EHLO replies have
// about twenty lines.
const MaxReplyLines = 512

// MaxReplyBytes bounds the bytes of one reply, all its lines together,
// for the same reason.
const MaxReplyBytes = 64 << 10

// Reply is one SMTP reply, possibly multi-line, as read from the MTA.
type Reply struct {
	Code  int      // 200..599
	Lines [][]byte // each raw line as received, CRLF included ("250-PIPELINING\r\n")
	one   [1][]byte
}

// Raw returns all lines concatenated, exactly as received (after any
// rewriting). It is a new slice.
func (r *Reply) Raw() []byte {
	n := 0
	for _, l := range r.Lines {
		n += len(l)
	}
	b := make([]byte, 0, n)
	for _, l := range r.Lines {
		b = append(b, l...)
	}
	return b
}

// Text returns the text of the lines (after "NNN-"/"NNN "), without line
// endings, joined with "\n", for logs.
func (r *Reply) Text() string {
	var sb strings.Builder
	for i, l := range r.Lines {
		if i > 0 {
			sb.WriteByte('\n')
		}
		sb.Write(lineText(l))
	}
	return sb.String()
}

// lineText is the text of a reply line: after the code and its separator,
// without CR LF.
func lineText(l []byte) []byte {
	l = trimEOL(l)
	if len(l) <= 4 {
		return nil
	}
	return l[4:]
}

// trimEOL removes a final LF and then a final CR.
func trimEOL(l []byte) []byte {
	if n := len(l); n > 0 && l[n-1] == '\n' {
		l = l[:n-1]
	}
	if n := len(l); n > 0 && l[n-1] == '\r' {
		l = l[:n-1]
	}
	return l
}

// Temporary reports a 4xx reply.
func (r *Reply) Temporary() bool { return r.Code/100 == 4 }

// Positive reports a 2xx or 3xx reply.
func (r *Reply) Positive() bool { return r.Code/100 == 2 || r.Code/100 == 3 }

// ReadReply reads one complete reply: lines "NNN-text" continuing and the
// last "NNN text" (or exactly "NNN"). Each line at most max bytes; every
// line must carry the same code; a line that is not a reply line is an
// error wrapping ErrBadReply. Bare LF line endings are accepted as read.
//
// The code's first digit must be 2 to 5 (RFC 5321 has no other replies).
// More than MaxReplyLines lines or MaxReplyBytes bytes is an error wrapping ErrBadReply. err is
// io.EOF, unwrapped, only when the connection ended before the first byte;
// an end within the reply wraps io.ErrUnexpectedEOF. Read errors are
// wrapped with %w. On error the Reply is nil and the stream is not in a
// known place: the caller should give up on the MTA connection.
func ReadReply(br *bufio.Reader, max int) (*Reply, error) {
	var (
		buf  = make([]byte, 0, 256) // most replies fit; EHLO's grows once or twice
		end  = make([]int, 0, 16)   // line ends in buf
		code []byte
	)
	for {
		start := len(buf)
		var tooLong bool
		var err error
		buf, tooLong, err = AppendLine(buf, br, max)
		if err != nil {
			if err == io.EOF {
				if start == 0 {
					return nil, io.EOF
				}
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("smtp: reading reply: %w", err)
		}
		if tooLong {
			return nil, fmt.Errorf("smtp: reply line longer than %d bytes: %w", max, ErrBadReply)
		}
		l := buf[start:]
		last, ok := replyLine(l)
		if !ok {
			return nil, fmt.Errorf("smtp: reply line %q: %w", clip(l), ErrBadReply)
		}
		if code == nil {
			code = l[:3]
		} else if !bytes.Equal(l[:3], code) {
			return nil, fmt.Errorf("smtp: reply line %q after code %s: %w", clip(l), code, ErrBadReply)
		}
		end = append(end, len(buf))
		if last {
			break
		}
		if len(buf) > MaxReplyBytes {
			return nil, fmt.Errorf("smtp: reply longer than %d bytes: %w", MaxReplyBytes, ErrBadReply)
		}
		if len(end) >= MaxReplyLines {
			return nil, fmt.Errorf("smtp: reply longer than %d lines: %w", MaxReplyLines, ErrBadReply)
		}
	}
	r := &Reply{}
	if len(end) == 1 {
		r.Lines = r.one[:] // most replies: one allocation less
	} else {
		r.Lines = make([][]byte, len(end))
	}
	r.Code = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	prev := 0
	for i, e := range end {
		// Full slice expressions: appending to one line must not
		// overwrite the next.
		r.Lines[i] = buf[prev:e:e]
		prev = e
	}
	return r, nil
}

// replyLine checks a line ending in LF: three digits, the first 2 to 5,
// then '-' (more lines follow), ' ' or nothing (the last line).
func replyLine(l []byte) (last, ok bool) {
	t := trimEOL(l)
	if len(t) < 3 || t[0] < '2' || t[0] > '5' || !isDigit(t[1]) || !isDigit(t[2]) {
		return false, false
	}
	if len(t) == 3 {
		return true, true
	}
	switch t[3] {
	case ' ':
		return true, true
	case '-':
		return false, true
	}
	return false, false
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// clip shortens a bad line for an error message.
func clip(l []byte) []byte {
	if len(l) > 64 {
		return l[:64]
	}
	return l
}

// FormatReply formats a reply the proxy writes itself:
// "<code> [<enhanced> ]<name> <text>\r\n". An empty enhanced code is left
// out. Text with "\n" in it becomes a multi-line reply ("<code>-..." lines,
// every line carrying the enhanced code and name).
//
// An empty name is left out with its space, and so is the space before an
// empty text. A final "\n" in text does not make an empty last line; a CR
// before a "\n" is dropped and any other CR becomes a space, so that text
// (which may hold a scanner's words) can never end a line early.
func FormatReply(code int, enhanced, name, text string) []byte {
	text = strings.TrimSuffix(text, "\n")
	lines := 1 + strings.Count(text, "\n")
	prefix := 4 + len(enhanced) + 1 + len(name) + 1
	b := make([]byte, 0, lines*(prefix+2)+len(text))
	for i := 0; i < lines; i++ {
		line := text
		if j := strings.IndexByte(text, '\n'); j >= 0 {
			line, text = text[:j], text[j+1:]
		}
		line = strings.TrimSuffix(line, "\r")
		b = strconv.AppendInt(b, int64(code), 10)
		if i < lines-1 {
			b = append(b, '-')
		} else {
			b = append(b, ' ')
		}
		sep := false
		for _, w := range [...]string{enhanced, name, line} {
			if w == "" {
				continue
			}
			if sep {
				b = append(b, ' ')
			}
			n := len(b)
			b = append(b, w...)
			for k := n; k < len(b); k++ {
				if b[k] == '\r' || b[k] == '\n' {
					b[k] = ' '
				}
			}
			sep = true
		}
		if !sep && i == lines-1 {
			b = b[:len(b)-1] // "250", not "250 ": RFC 5321 has no space without text
		}
		b = append(b, '\r', '\n')
	}
	return b
}
