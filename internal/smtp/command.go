package smtp

import (
	"fmt"
	"strings"
)

// Command is one command line from the client, split at its first run of
// blanks.
type Command struct {
	Verb string // upper-cased first word ("MAIL", "RCPT", "EHLO", "DATA", "STARTTLS", ...); "" for an empty line
	Arg  string // the rest, after the first run of blanks, without the line end and trailing blanks
}

// knownVerbs are returned without allocating: they are nearly every command
// a client sends.
var knownVerbs = [...]string{
	"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP",
	"QUIT", "VRFY", "EXPN", "HELP", "AUTH", "STARTTLS", "XCLIENT",
	"XEXCH50", "XFORWARD", "ETRN", "TURN", "ATRN",
}

// isBlank reports the separators of a command line: space and tab (tab is
// not RFC 5321 but some clients send it and MTAs accept it). MTAs split
// the verb on any C white space (Postfix, Exim and sendmail use isspace);
// the other white space bytes (VT, FF, CR, LF) are refused by
// ParseCommand, so that space and tab are the only separators left and
// the proxy reads every line it passes on the way the MTA does.
func isBlank(c byte) bool { return c == ' ' || c == '\t' }

// CommandError is a command line that ParseCommand refuses: it holds a
// control byte, or an 8-bit byte in its verb.
type CommandError struct {
	Pos  int  // offset of the byte in the line
	Byte byte // the byte
}

func (e *CommandError) Error() string {
	if e.Byte >= 0x80 {
		return fmt.Sprintf("8-bit byte 0x%02x in the verb at offset %d", e.Byte, e.Pos)
	}
	return fmt.Sprintf("control byte 0x%02x at offset %d", e.Byte, e.Pos)
}

// ParseCommand splits a command line ("mail FROM:<a@b>\r\n") into its verb
// and argument. Verbs are case-insensitive. The line ends with CR LF, a
// bare LF (as Postfix accepts it) or nothing. Leading blanks are skipped,
// the verb ends at the first blank, the argument starts after the run of
// blanks that follows it. The verb is upper-cased.
//
// A line is refused with a *CommandError when it holds, before its line
// end, a byte below 0x20 other than tab (NUL, a bare CR, VT, FF, ...) or
// DEL, or when its verb holds a byte above 0x7F: MTAs would read such a
// line in ways that differ from one another and from the proxy (a NUL
// ends a C string, VT and FF are separators to isspace). Bytes above 0x7F
// in the argument are kept: they are the MTA's to judge (SMTPUTF8
// addresses).
func ParseCommand(line []byte) (Command, error) {
	end := len(line)
	if end > 0 && line[end-1] == '\n' {
		end--
		if end > 0 && line[end-1] == '\r' {
			end--
		}
	}
	for i := range end {
		if c := line[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return Command{}, &CommandError{Pos: i, Byte: c}
		}
	}
	for end > 0 && isBlank(line[end-1]) {
		end--
	}
	i := 0
	for i < end && isBlank(line[i]) {
		i++
	}
	v := i
	for i < end && !isBlank(line[i]) {
		if line[i] >= 0x80 {
			return Command{}, &CommandError{Pos: i, Byte: line[i]}
		}
		i++
	}
	verb := line[v:i]
	for i < end && isBlank(line[i]) {
		i++
	}
	var c Command
	if i < end {
		c.Arg = string(line[i:end])
	}
	if len(verb) == 0 {
		return c, nil
	}
	for _, k := range knownVerbs {
		if equalFoldASCII(verb, k) {
			c.Verb = k
			return c, nil
		}
	}
	up := make([]byte, len(verb))
	for j, b := range verb {
		up[j] = upperASCII(b)
	}
	c.Verb = string(up)
	return c, nil
}

func upperASCII(b byte) byte {
	if 'a' <= b && b <= 'z' {
		return b - ('a' - 'A')
	}
	return b
}

// equalFoldASCII compares b with s, ignoring the case of ASCII letters.
func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if upperASCII(b[i]) != upperASCII(s[i]) {
			return false
		}
	}
	return true
}

// Path extracts the address of "MAIL FROM:<a@b> SIZE=1" / "RCPT TO:<a@b>"
// arguments (Arg of the command): prefix is "FROM:" or "TO:" (case-
// insensitive, spaces after the colon tolerated, a missing <> tolerated as
// some clients do), addr is what is between < and > ("" for the null
// sender <>), params the rest. ok=false when the argument is not of that form.
//
// Within the brackets, a quoted local part may hold '>' and blanks
// (`<"a> b"@c>`); blanks just inside the brackets are trimmed; a source
// route ("<@x,@y:a@b>") is returned as it is. Without brackets the address
// ends at the first blank and must not be empty nor hold '<' or '>'. After
// the address, only blanks may separate it from the parameters, which are
// returned with surrounding blanks trimmed.
func Path(arg, prefix string) (addr, params string, ok bool) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", "", false
	}
	s := strings.TrimLeft(arg[len(prefix):], " \t")
	var rest string
	if strings.HasPrefix(s, "<") {
		end := closingBracket(s)
		if end < 0 {
			return "", "", false
		}
		addr = strings.Trim(s[1:end], " \t")
		rest = s[end+1:]
		if rest != "" && !isBlank(rest[0]) {
			return "", "", false
		}
	} else {
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		addr, rest = s[:end], s[end:]
		if addr == "" || strings.ContainsAny(addr, "<>") {
			return "", "", false
		}
	}
	return addr, strings.Trim(rest, " \t"), true
}

// closingBracket returns the index in s (which starts with '<') of the '>'
// that closes it, skipping quoted strings and their backslash escapes; -1
// when there is none.
func closingBracket(s string) int {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '>':
			return i
		}
	}
	return -1
}
