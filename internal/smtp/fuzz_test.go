package smtp

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func FuzzReadLine(f *testing.F) {
	f.Add([]byte("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\nQUIT"), uint16(10))
	f.Add([]byte("\n\n\r\r\n"), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, max16 uint16) {
		max := int(max16 % 300)
		// The lines as they are in data, each up to and including its LF.
		var want [][]byte
		for rest := data; len(rest) > 0; {
			j := bytes.IndexByte(rest, '\n') + 1
			if j == 0 {
				j = len(rest)
			}
			want, rest = append(want, rest[:j]), rest[j:]
		}
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		for i := 0; ; i++ {
			line, tooLong, err := ReadLine(br, max)
			if i == len(want) {
				if err == nil || len(line) > 0 || tooLong {
					t.Fatalf("after the last line: got (%q, %v, %v), want EOF", line, tooLong, err)
				}
				return
			}
			w := want[i]
			wantLong := max > 0 && len(w) > max
			if wantLong {
				w = w[:max]
			}
			if !bytes.Equal(line, w) || tooLong != wantLong {
				t.Fatalf("line %d: got (%q, %v), want (%q, %v)", i, line, tooLong, w, wantLong)
			}
			if last := i == len(want)-1 && !bytes.HasSuffix(data, []byte("\n")); (err != nil) != last {
				t.Fatalf("line %d: got error %v, want one only on a final line without LF", i, err)
			}
		}
	})
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"MAIL FROM:<a@b>\r\n", "  rcpt\tTO:<x>  \r\n", "\r\n", "data", "x-Föo bar\r\r\n", "VRFY a\rb\r\n",
		"DATA\x0b\r\n", "DATA\x00\r\n", "BDAT\x0c68 LAST\n", "MAIL FROM:<jörg@b> SMTPUTF8\r\n", "DAT\xc1\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		c, err := ParseCommand(line)
		body := line
		if bytes.HasSuffix(body, []byte("\n")) {
			body = bytes.TrimSuffix(body[:len(body)-1], []byte("\r"))
		}
		if err != nil {
			if c != (Command{}) {
				t.Fatalf("error %v with %+v", err, c)
			}
			// Refused only for a control byte before the line end, or
			// an 8-bit byte in the first word.
			bad := bytes.ContainsFunc(body, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f })
			first := bytes.FieldsFunc(body, func(r rune) bool { return r == ' ' || r == '\t' })
			if !bad && (len(first) == 0 || !bytes.ContainsFunc(first[0], func(r rune) bool { return r >= 0x80 })) {
				t.Fatalf("%q refused (%v) but holds no control byte and no 8-bit verb", line, err)
			}
			return
		}
		if strings.ContainsAny(c.Verb, " \t") || hasLowerASCII(c.Verb) {
			t.Fatalf("verb %q: has blanks or lower case", c.Verb)
		}
		for _, b := range []byte(c.Verb + c.Arg) {
			if b < 0x20 && b != '\t' || b == 0x7f {
				t.Fatalf("%+v: accepted with control byte 0x%02x", c, b)
			}
		}
		for _, b := range []byte(c.Verb) {
			if b >= 0x80 {
				t.Fatalf("verb %q: accepted with an 8-bit byte", c.Verb)
			}
		}
		if c.Verb == "" && c.Arg != "" {
			t.Fatalf("no verb but argument %q", c.Arg)
		}
		if strings.TrimLeft(c.Arg, " \t") != c.Arg || strings.TrimRight(c.Arg, " \t\r\n") != c.Arg {
			t.Fatalf("argument %q: blanks or line end around it", c.Arg)
		}
		// The verb is the one an MTA reads that ends the line at a NUL
		// and splits it on any C white space (Postfix, Exim, sendmail).
		if mta := mtaVerb(line); mta != c.Verb {
			t.Fatalf("%q: verb %q, an MTA reads %q", line, c.Verb, mta)
		}
		if c.Verb != "" {
			if again, err := ParseCommand([]byte(c.Verb + " " + c.Arg + "\r\n")); err != nil || again != c {
				t.Fatalf("reparsed: got %+v, %v, want %+v", again, err, c)
			}
		}
	})
}

// mtaVerb is the verb as Postfix's smtpd reads a command line: the line
// ends at LF (a CR before it dropped) or at a NUL, words are split on C
// isspace, and the verb is compared without case.
func mtaVerb(line []byte) string {
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	if i := bytes.IndexByte(line, 0); i >= 0 {
		line = line[:i]
	}
	words := bytes.FieldsFunc(line, func(r rune) bool { return r < 0x80 && strings.ContainsRune(" \t\n\v\f\r", r) })
	if len(words) == 0 {
		return ""
	}
	return strings.ToUpper(string(words[0]))
}

func hasLowerASCII(s string) bool {
	for i := range len(s) {
		if 'a' <= s[i] && s[i] <= 'z' {
			return true
		}
	}
	return false
}

func FuzzPath(f *testing.F) {
	for _, s := range []string{"FROM:<a@b> SIZE=1", "to:<>", "FROM: a@b x", `TO:<"a> b"@c>`, "FROM:<a", "TO:<@a,@b:c@d>"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, arg string, to bool) {
		prefix := "FROM:"
		if to {
			prefix = "TO:"
		}
		addr, params, ok := Path(arg, prefix)
		if !ok {
			if addr != "" || params != "" {
				t.Fatalf("not ok but got (%q, %q)", addr, params)
			}
			return
		}
		if !strings.EqualFold(arg[:len(prefix)], prefix) {
			t.Fatalf("ok without the prefix %q in %q", prefix, arg)
		}
		if !strings.Contains(arg, addr) || !strings.HasSuffix(strings.TrimRight(arg, " \t"), params) {
			t.Fatalf("(%q, %q) not taken from %q", addr, params, arg)
		}
		if strings.Trim(params, " \t") != params || strings.Trim(addr, " \t") != addr {
			t.Fatalf("(%q, %q): blanks around", addr, params)
		}
	})
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 OK\r\n", "250-a\r\n250-CHUNKING\r\n250 AUTH=LOGIN\r\nrest", "250\r\n", "220-a\n220 b\n",
		"250-a\r\n251 b\r\n", "25x\r\n", "250-a\r\n250-", "250-mx\r\n250-XCLIENT ADDR\r\n250-XEXCH50\r\n250 BINARYMIME\r\n",
	} {
		f.Add([]byte(s), uint16(512))
	}
	f.Fuzz(func(t *testing.T, data []byte, max16 uint16) {
		max := int(max16 % 1024)
		rd := bytes.NewReader(data)
		br := bufio.NewReaderSize(rd, 16)
		r, err := ReadReply(br, max)
		if err != nil {
			if r != nil {
				t.Fatalf("error %v with a reply", err)
			}
			return
		}
		consumed := len(data) - rd.Len() - br.Buffered()
		raw := r.Raw()
		if !bytes.Equal(raw, data[:consumed]) {
			t.Fatalf("Raw: got %q, want the %d bytes consumed %q", raw, consumed, data[:consumed])
		}
		if r.Code < 200 || r.Code > 599 || len(r.Lines) == 0 || len(r.Lines) > MaxReplyLines {
			t.Fatalf("got code %d with %d lines", r.Code, len(r.Lines))
		}
		for _, l := range r.Lines {
			if !bytes.HasSuffix(l, []byte("\n")) || bytes.IndexByte(l, '\n') != len(l)-1 || max > 0 && len(l) > max {
				t.Fatalf("line %q", l)
			}
		}
		_ = r.Text()
		// Rewriting keeps every length and changes only bytes to '*'.
		RewriteEHLO(r, []string{"CHUNKING", "BINARYMIME", "XEXCH50", "XCLIENT", "AUTH"})
		after := r.Raw()
		if len(after) != len(raw) {
			t.Fatalf("rewriting changed the length: %q to %q", raw, after)
		}
		for i := range after {
			if after[i] != raw[i] && after[i] != '*' {
				t.Fatalf("rewriting changed %q to %q", raw, after)
			}
		}
		if !bytes.Equal(after[:len(r.Lines[0])], raw[:len(r.Lines[0])]) {
			t.Fatalf("rewriting changed the first line %q", r.Lines[0])
		}
	})
}

func FuzzFormatReply(f *testing.F) {
	f.Add(451, "4.3.2", "gate", "one\ntwo")
	f.Add(250, "", "", "")
	f.Fuzz(func(t *testing.T, code int, enhanced, name, text string) {
		code = 200 + (code%400+400)%400
		enhanced = strings.Map(noLineEnd, enhanced)
		name = strings.Map(noLineEnd, name)
		if strings.Count(text, "\n") >= MaxReplyLines {
			return // more than ReadReply takes
		}
		b := FormatReply(code, enhanced, name, text)
		r, err := ReadReply(bufio.NewReader(bytes.NewReader(b)), 0)
		if err != nil {
			t.Fatalf("%q does not read back: %v", b, err)
		}
		if r.Code != code || !bytes.Equal(r.Raw(), b) {
			t.Fatalf("read back %d %q, want %d %q", r.Code, r.Raw(), code, b)
		}
		if want := 1 + strings.Count(strings.TrimSuffix(text, "\n"), "\n"); len(r.Lines) != want {
			t.Fatalf("%q: got %d lines, want %d", b, len(r.Lines), want)
		}
	})
}

func noLineEnd(r rune) rune {
	if r == '\r' || r == '\n' {
		return -1
	}
	return r
}

// restuff is dot-stuffing as a client does it: a "." before every line
// that starts with one.
func restuff(spool []byte) []byte {
	var b []byte
	for rest := spool; len(rest) > 0; {
		j := bytes.IndexByte(rest, '\n') + 1
		if j == 0 {
			j = len(rest)
		}
		if rest[0] == '.' {
			b = append(b, '.')
		}
		b, rest = append(b, rest[:j]...), rest[j:]
	}
	return b
}

// received is what an RFC 5321 receiver makes of a forwarded (normalised)
// stream, stuffed again: lines ".X" with X not a dot lose their dot (a
// sender that does not stuff), every other line is unchanged.
func received(fwd []byte) []byte {
	var b []byte
	for rest := fwd; len(rest) > 0; {
		j := bytes.IndexByte(rest, '\n') + 1
		if j == 0 {
			j = len(rest)
		}
		line := rest[:j]
		if len(line) >= 2 && line[0] == '.' && line[1] != '.' {
			line = line[1:]
		}
		b, rest = append(b, line...), rest[j:]
	}
	return b
}

func FuzzDataFilter(f *testing.F) {
	for _, m := range messages {
		f.Add([]byte(m))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var df DataFilter
		fwd, spool, n, done := feedPieces(t, &df, data)
		if n > len(data) || !done && n != len(data) {
			t.Fatalf("consumed %d of %d, done %v", n, len(data), done)
		}
		rf, rs, rn, rd := refFilter(data)
		if !bytes.Equal(fwd, rf) || !bytes.Equal(spool, rs) || n != rn || done != rd {
			t.Fatalf("got (%q, %q, %d, %v), model says (%q, %q, %d, %v)", fwd, spool, n, done, rf, rs, rn, rd)
		}
		// What is forwarded has no bare LF: the MTA cannot see an end of
		// message, or a line, that the proxy did not.
		for i, c := range fwd {
			if c == '\n' && (i == 0 || fwd[i-1] != '\r') {
				t.Fatalf("bare LF at %d in forwarded %q", i, fwd)
			}
		}
		if bytes.HasPrefix(fwd, []byte(".\r\n")) || bytes.Contains(fwd, []byte("\r\n.\r\n")) {
			t.Fatalf("forwarded %q holds an end of message", fwd)
		}
		if got, want := restuff(spool), received(fwd); !bytes.Equal(got, want) {
			t.Fatalf("spool re-stuffed: got %q, want %q", got, want)
		}
		// Every split of short inputs; of longer ones (every split would be
		// quadratic), about 64 spread over the input.
		step := 1
		if len(data) > 256 {
			step = len(data) / 64
		}
		for k := 0; k <= len(data); k += step {
			df.Reset()
			f2, s2, n2, d2 := feedPieces(t, &df, data[:k], data[k:])
			if !bytes.Equal(f2, fwd) || !bytes.Equal(s2, spool) || n2 != n || d2 != done {
				t.Fatalf("split at %d: got (%q, %q, %d, %v), want (%q, %q, %d, %v)", k, f2, s2, n2, d2, fwd, spool, n, done)
			}
		}
	})
}
