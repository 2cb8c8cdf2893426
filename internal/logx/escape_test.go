package logx

import (
	"bytes"
	"strings"
	"testing"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "",
		"mail.example.com":      "mail.example.com",
		"a\r\nb":                `a\x0d\x0ab`,
		"\x1b[31mred":           `\x1b[31mred`,
		"tab\there\x7f":         `tab\x09here\x7f`,
		"caf\xc3\xa9 \x00 \xff": `caf\xc3\xa9 \x00 \xff`,
		`back\slash`:            `back\slash`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLineCannotBeForged: whatever the arguments hold, one call writes one
// line, with the bytes escaped.
func TestLineCannotBeForged(t *testing.T) {
	var b bytes.Buffer
	l := To(&b, Debug)
	l.Infof("HELO %s", "evil\r\nsmtp-gated[1]: info: CLOSE by=quit\x1b[2K")
	out := b.String()
	if strings.Count(out, "\n") != 1 || strings.ContainsAny(out[:len(out)-1], "\r\x1b") {
		t.Fatalf("one call wrote %q", out)
	}
	if !strings.Contains(out, `evil\x0d\x0asmtp-gated[1]: info: CLOSE by=quit\x1b[2K`) {
		t.Errorf("not escaped: %q", out)
	}
}
