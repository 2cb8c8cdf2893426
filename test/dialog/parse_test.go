package dialog

import (
	"strings"
	"testing"
	"time"
)

// Script errors name the file and line, before any daemon starts.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"c foo", `x.dlg:1: c foo: unknown step "foo" for c`},
		{"m connect", `x.dlg:1: m connect: unknown step "connect" for m`},
		{"x connect", `x.dlg:1: x connect: unknown step "x"`},
		{"c connect\nconfig port 1", `x.dlg:2: config port 1: configuration lines must come before the first step`},
		{"c connect\nmta6", `x.dlg:2: mta6: configuration lines must come before the first step`},
		{"config", `x.dlg:1: config: config needs an option`},
		{"c connect now", `x.dlg:1: c connect now: connect takes no argument`},
		{`c raw hello`, `x.dlg:1: c raw hello: want a Go double-quoted string: invalid syntax`},
		{`m <-raw ""`, `x.dlg:1: m <-raw "": empty string`},
		{"log ~ (", "x.dlg:1: log ~ (: bad regexp: error parsing regexp: missing closing ): `(`"},
		{"log (", `x.dlg:1: log (: want "log ~ REGEXP"`},
		{"c <~ a[", "x.dlg:1: c <~ a[: bad regexp: error parsing regexp: missing closing ]: `[`"},
		{"c long 3 ABCD", `x.dlg:1: c long 3 ABCD: want "long N PREFIX" with N at least the length of PREFIX`},
		{"c data inline 1", `x.dlg:1: c data inline 1: want "c data inline N" with N >= 2`},
		{"c data ../x", `x.dlg:1: c data ../x: want "c data FILE" or "c data inline N"`},
		{"m data x", `x.dlg:1: m data x: m data takes no argument`},
		{"m data-equals m", `x.dlg:1: m data-equals m: want "m data-equals c"`},
		{"c data-equals c", `x.dlg:1: c data-equals c: unknown step "data-equals" for c`},
		{"sleep soon", `x.dlg:1: sleep soon: sleep needs a positive duration (e.g. 200ms)`},
		{"c nothing -1s", `x.dlg:1: c nothing -1s: nothing takes an optional positive duration`},
		{"# only a comment\n\n", `x.dlg: no steps`},
	} {
		_, err := parse("x.dlg", tc.src, "testdata")
		if err == nil || err.Error() != tc.want {
			t.Errorf("parse(%q):\n got %v\nwant %s", tc.src, err, tc.want)
		}
	}
}

func TestParse(t *testing.T) {
	src := "# comment\r\nconfig msg_hello  hi there \r\nmta6\r\n\r\nc connect\r\n" +
		"c -> EHLO x  \r\nc -> \r\nm raw \"a\\r\\n\\x00\"\r\nc <- 250 ok\r\n  # indented comment\r\n" +
		"c long 10 AB\r\nc nothing\r\nm nothing 2s\r\nexpect-close-line ~ by=${client},\r\nc data inline 20\r\n"
	s, err := parse("x.dlg", src, "testdata")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.config, "|"); got != "msg_hello  hi there" || !s.mta6 || s.client6 {
		t.Errorf("header: config %q mta6 %v client6 %v", got, s.mta6, s.client6)
	}
	want := []struct {
		line     int
		side, op string
		arg      string
	}{
		{5, "c", "connect", ""},
		{6, "c", "->", "EHLO x  "}, // TEXT is taken exactly, trailing spaces included
		{7, "c", "->", ""},
		{8, "m", "raw", `"a\r\n\x00"`},
		{9, "c", "<-", "250 ok"},
		{11, "c", "long", "AB"},
		{12, "c", "nothing", ""},
		{13, "m", "nothing", "2s"},
		{14, "", "expect-close-line", "by=${client},"},
		{15, "c", "data", "inline 20"},
	}
	if len(s.steps) != len(want) {
		t.Fatalf("%d steps, want %d: %+v", len(s.steps), len(want), s.steps)
	}
	for i, w := range want {
		st := s.steps[i]
		if st.line != w.line || st.side != w.side || st.op != w.op || st.arg != w.arg {
			t.Errorf("step %d: got line %d %q %q %q, want line %d %q %q %q", i, st.line, st.side, st.op, st.arg, w.line, w.side, w.op, w.arg)
		}
	}
	if got := string(s.steps[3].raw); got != "a\r\n\x00" {
		t.Errorf("raw: got %q", got)
	}
	if s.steps[5].n != 10 || s.steps[6].dur != nothingTimeout || s.steps[7].dur != 2*time.Second {
		t.Errorf("long n %d, nothing %v, %v", s.steps[5].n, s.steps[6].dur, s.steps[7].dur)
	}
	if got := string(s.steps[9].raw); len(got) != 20+3 || !strings.HasSuffix(got, "\r\n.\r\n") {
		t.Errorf("c data inline 20: payload %q", got)
	}
}

// generated bodies are exactly N bytes of CRLF lines, and their payload
// has one end-of-data line, the last.
func TestGenerated(t *testing.T) {
	for n := 2; n < 3000; n++ {
		g := generated(n)
		inner := strings.ReplaceAll(string(g), "\r\n", "")
		if len(g) != n || !strings.HasSuffix(string(g), "\r\n") || strings.ContainsAny(inner, "\r\n") {
			t.Fatalf("generated(%d) = %q", n, g)
		}
	}
}

func TestExpand(t *testing.T) {
	got := expand(`src=${client}, to ${mta}`, map[string]string{"${client}": "[::1]:25", "${mta}": "127.0.0.1:2525"})
	if want := `src=\[::1\]:25, to 127\.0\.0\.1:2525`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
