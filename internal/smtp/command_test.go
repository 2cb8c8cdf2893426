package smtp

import "testing"

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
		{"data", Command{"DATA", ""}},
		{"StartTLS\r\n", Command{"STARTTLS", ""}},
		{"ehlo   client.example  \r\n", Command{"EHLO", "client.example"}},
		{"EHLO\tclient.example\t\r\n", Command{"EHLO", "client.example"}},
		{"  NOOP\r\n", Command{"NOOP", ""}},
		{"HELO a  b\r\n", Command{"HELO", "a  b"}},
		{"QUIT \r\n", Command{"QUIT", ""}},
		{"\r\n", Command{"", ""}},
		{"", Command{"", ""}},
		{"   \t \r\n", Command{"", ""}},
		{"xyzzy plugh\r\n", Command{"XYZZY", "plugh"}},
		{"x-Föo bar\r\n", Command{"X-FöO", "bar"}},
		{"AUTH PLAIN AGFAYg==\r\n", Command{"AUTH", "PLAIN AGFAYg=="}},
		{"MAIL FROM:<a@b>\r\r\n", Command{"MAIL", "FROM:<a@b>"}},
		{"VRFY a\rb\r\n", Command{"VRFY", "a\rb"}},
	}
	for _, tt := range tests {
		if got := ParseCommand([]byte(tt.in)); got != tt.want {
			t.Errorf("ParseCommand(%q): got %+v, want %+v", tt.in, got, tt.want)
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
