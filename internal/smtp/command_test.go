package smtp

import (
	"errors"
	"testing"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in   string
		want Command
	}{
		{"MAIL FROM:<a@b>\r\n", Command{"MAIL", "FROM:<a@b>"}},
		{"mail FROM:<a@b>\r\n", Command{"MAIL", "FROM:<a@b>"}},
		{"MaIl from:<a@b> SIZE=12\r\n", Command{"MAIL", "from:<a@b> SIZE=12"}},
		{"rcpt to:<x@y>\n", Command{"RCPT", "to:<x@y>"}},
		{"DATA\r\n", Command{"DATA", ""}},
		{"dAtA\r\n", Command{"DATA", ""}},
		{"DATA\n", Command{"DATA", ""}},
		{"DATA \r\n", Command{"DATA", ""}},
		{"DATA\t\r\n", Command{"DATA", ""}},
		{" \t DATA\r\n", Command{"DATA", ""}},
		{"DATA   x\r\n", Command{"DATA", "x"}},
		{"data", Command{"DATA", ""}},
		{"StartTLS\r\n", Command{"STARTTLS", ""}},
		{"ehlo   client.example  \r\n", Command{"EHLO", "client.example"}},
		{"EHLO\tclient.example\t\r\n", Command{"EHLO", "client.example"}},
		{"  NOOP\r\n", Command{"NOOP", ""}},
		{"HELO a  b\r\n", Command{"HELO", "a  b"}},
		{"HELO a\tb\r\n", Command{"HELO", "a\tb"}},
		{"QUIT \r\n", Command{"QUIT", ""}},
		{"\r\n", Command{"", ""}},
		{"\n", Command{"", ""}},
		{"", Command{"", ""}},
		{"   \t \r\n", Command{"", ""}},
		{"xyzzy plugh\r\n", Command{"XYZZY", "plugh"}},
		{"x-foo b\xe4r\r\n", Command{"X-FOO", "b\xe4r"}},
		{"MAIL FROM:<j\xc3\xb6rg@b\xc3\xbccher.example> SMTPUTF8\r\n", Command{"MAIL", "FROM:<j\xc3\xb6rg@b\xc3\xbccher.example> SMTPUTF8"}},
		{"AUTH PLAIN AGFAYg==\r\n", Command{"AUTH", "PLAIN AGFAYg=="}},
	}
	for _, tt := range tests {
		got, err := ParseCommand([]byte(tt.in))
		if err != nil || got != tt.want {
			t.Errorf("ParseCommand(%q): got %+v, %v, want %+v", tt.in, got, err, tt.want)
		}
	}
}

// Lines that MTAs read in ways of their own are refused, with the offset
// and the value of the first byte at fault.
func TestParseCommandRefused(t *testing.T) {
	tests := []struct {
		in   string
		pos  int
		byte byte
	}{
		{"DATA\x0b\r\n", 4, 0x0b}, // VT: a separator to isspace
		{"DATA\x0c\r\n", 4, 0x0c}, // FF
		{"DATA\x00\r\n", 4, 0x00}, // NUL: the end of a C string
		{"DA\x00TA\r\n", 2, 0x00}, // inside the verb
		{"\x00DATA\r\n", 0, 0x00}, // before it
		{"DATA\r\r\n", 4, '\r'},   // a bare CR before the line end
		{"DATA\rx\r\n", 4, '\r'},  // inside the line
		{"DATA\r", 4, '\r'},       // a bare CR is no line end
		{"BDAT\x7f10 LAST\r\n", 4, 0x7f},
		{"\x1bDATA\r\n", 0, 0x1b},
		{"MAIL FROM:<a@b>\x01\r\n", 15, 0x01},
		{"VRFY a\rb\r\n", 6, '\r'},
		{"NOOP\n\n", 4, '\n'},      // a line holds one LF, at its end
		{"DAT\xc1 x\r\n", 3, 0xc1}, // 8-bit in the verb
		{"\xefDATA\r\n", 0, 0xef},
		{"x-F\xc3\xb6o bar\r\n", 3, 0xc3},
	}
	for _, tt := range tests {
		got, err := ParseCommand([]byte(tt.in))
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Pos != tt.pos || ce.Byte != tt.byte || got != (Command{}) {
			t.Errorf("ParseCommand(%q): got %+v, %v, want a CommandError for 0x%02x at %d", tt.in, got, err, tt.byte, tt.pos)
		}
	}
	// Every C0 control but tab, and DEL, after the verb or inside it.
	for c := range 0x80 {
		if c >= 0x20 && c != 0x7f || c == '\t' {
			continue
		}
		for _, in := range []string{"DATA" + string(rune(c)) + "\r\n", "DA" + string(rune(c)) + "TA\r\n", "MAIL FROM:<a" + string(rune(c)) + "@b>\r\n"} {
			if _, err := ParseCommand([]byte(in)); err == nil {
				t.Errorf("ParseCommand(%q): no error", in)
			}
		}
	}
}

// Known verbs come without an allocation; the argument costs one string.
func TestParseCommandAllocs(t *testing.T) {
	line := []byte("rcpt TO:<someone@example.org>\r\n")
	if n := testing.AllocsPerRun(100, func() { ParseCommand(line) }); n > 1 {
		t.Errorf("got %v allocations, want at most 1", n)
	}
	line = []byte("rset\r\n")
	if n := testing.AllocsPerRun(100, func() { ParseCommand(line) }); n != 0 {
		t.Errorf("got %v allocations, want 0", n)
	}
}

func TestPath(t *testing.T) {
	tests := []struct {
		arg, prefix  string
		addr, params string
		ok           bool
	}{
		{"FROM:<a@b>", "FROM:", "a@b", "", true},
		{"FROM:<a@b> SIZE=1", "FROM:", "a@b", "SIZE=1", true},
		{"from:<a@b>  SIZE=1 BODY=8BITMIME", "FROM:", "a@b", "SIZE=1 BODY=8BITMIME", true},
		{"FROM:<>", "FROM:", "", "", true},
		{"FROM:<> SIZE=100", "FROM:", "", "SIZE=100", true},
		{"FROM: <a@b>", "FROM:", "a@b", "", true},
		{"FROM:   <a@b>", "FROM:", "a@b", "", true},
		{"FROM:a@b", "FROM:", "a@b", "", true},
		{"FROM: a@b SIZE=1", "FROM:", "a@b", "SIZE=1", true},
		{"TO:<x@y>", "TO:", "x@y", "", true},
		{"to:<x@y> NOTIFY=NEVER", "TO:", "x@y", "NOTIFY=NEVER", true},
		{"To:<Postmaster>", "TO:", "Postmaster", "", true},
		{"TO:< x@y >", "TO:", "x@y", "", true},
		{`TO:<"a> b"@y>`, "TO:", `"a> b"@y`, "", true},
		{`TO:<"a\"> b"@y> X=1`, "TO:", `"a\"> b"@y`, "X=1", true},
		{"TO:<@r1,@r2:x@y>", "TO:", "@r1,@r2:x@y", "", true},
		// bad forms
		{"TO:<x@y>", "FROM:", "", "", false},
		{"FROM <a@b>", "FROM:", "", "", false},
		{"FROM :<a@b>", "FROM:", "", "", false},
		{"FRO", "FROM:", "", "", false},
		{"", "FROM:", "", "", false},
		{"FROM:", "FROM:", "", "", false},
		{"FROM:   ", "FROM:", "", "", false},
		{"FROM:<a@b", "FROM:", "", "", false},
		{"FROM:<a@b>SIZE=1", "FROM:", "", "", false},
		{"FROM:a<b>", "FROM:", "", "", false},
		{"FROM:a@b>", "FROM:", "", "", false},
		{`TO:<"x>`, "TO:", "", "", false},
	}
	for _, tt := range tests {
		addr, params, ok := Path(tt.arg, tt.prefix)
		if addr != tt.addr || params != tt.params || ok != tt.ok {
			t.Errorf("Path(%q, %q): got (%q, %q, %v), want (%q, %q, %v)",
				tt.arg, tt.prefix, addr, params, ok, tt.addr, tt.params, tt.ok)
		}
	}
}
