package smtp

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		max   int
		code  int
		lines []string
		err   error // nil: success; else errors.Is target
		rest  string
	}{
		{"single", "250 OK\r\n", 512, 250, []string{"250 OK\r\n"}, nil, ""},
		{"single then more", "250 OK\r\n354 go\r\n", 512, 250, []string{"250 OK\r\n"}, nil, "354 go\r\n"},
		{"multi", "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n", 512, 250,
			[]string{"250-mx.example\r\n", "250-PIPELINING\r\n", "250 SIZE 100\r\n"}, nil, ""},
		{"bare code", "250\r\n", 512, 250, []string{"250\r\n"}, nil, ""},
		{"bare code multi", "250-a\r\n250\r\n", 512, 250, []string{"250-a\r\n", "250\r\n"}, nil, ""},
		{"bare LF", "220-a\n220 b\n", 512, 220, []string{"220-a\n", "220 b\n"}, nil, ""},
		{"empty continuation", "250-\r\n250 x\r\n", 512, 250, []string{"250-\r\n", "250 x\r\n"}, nil, ""},
		{"space no text", "421 \r\n", 512, 421, []string{"421 \r\n"}, nil, ""},
		{"554", "554 5.7.1 no\r\n", 512, 554, []string{"554 5.7.1 no\r\n"}, nil, ""},
		{"exactly max", "250 OK\r\n", 8, 250, []string{"250 OK\r\n"}, nil, ""},

		{"eof at once", "", 512, 0, nil, io.EOF, ""},
		{"mismatched codes", "250-a\r\n251 b\r\n", 512, 0, nil, ErrBadReply, ""},
		{"non-numeric", "25x OK\r\n", 512, 0, nil, ErrBadReply, ""},
		{"text only", "hello\r\n", 512, 0, nil, ErrBadReply, ""},
		{"short", "25\r\n", 512, 0, nil, ErrBadReply, ""},
		{"empty line", "\r\n", 512, 0, nil, ErrBadReply, ""},
		{"1xx", "199 x\r\n", 512, 0, nil, ErrBadReply, ""},
		{"6xx", "600 x\r\n", 512, 0, nil, ErrBadReply, ""},
		{"bad separator", "250_x\r\n", 512, 0, nil, ErrBadReply, ""},
		{"too long", "250 " + strings.Repeat("x", 100) + "\r\n", 64, 0, nil, ErrBadReply, ""},
		{"too long continuation", "250-a\r\n250-" + strings.Repeat("x", 100) + "\r\n250 b\r\n", 64, 0, nil, ErrBadReply, ""},
		{"eof in the middle", "250-a\r\n250-b\r\n", 512, 0, nil, io.ErrUnexpectedEOF, ""},
		{"eof in a line", "250-a\r\n250 b", 512, 0, nil, io.ErrUnexpectedEOF, ""},
		{"eof in first line", "250 OK", 512, 0, nil, io.ErrUnexpectedEOF, ""},
		{"too many lines", strings.Repeat("250-x\r\n", MaxReplyLines+1) + "250 y\r\n", 512, 0, nil, ErrBadReply, ""},
		{"too many bytes", strings.Repeat("250-"+strings.Repeat("x", 250)+"\r\n", 300) + "250 y\r\n", 512, 0, nil, ErrBadReply, ""},
		{"max lines", strings.Repeat("250-x\r\n", MaxReplyLines-1) + "250 y\r\n", 512, 250,
			append(strings.Split(strings.Repeat("250-x\r\n|", MaxReplyLines-1), "|")[:MaxReplyLines-1], "250 y\r\n"), nil, ""},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				br := rd.new(tt.in)
				r, err := ReadReply(br, tt.max)
				if tt.err != nil {
					if !errors.Is(err, tt.err) || r != nil {
						t.Fatalf("got (%v, %v), want error %v", r, err, tt.err)
					}
					if tt.err == io.EOF && err != io.EOF {
						t.Fatalf("got %v, want io.EOF itself", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				if r.Code != tt.code {
					t.Errorf("got code %d, want %d", r.Code, tt.code)
				}
				if len(r.Lines) != len(tt.lines) {
					t.Fatalf("got %d lines %q, want %d %q", len(r.Lines), r.Lines, len(tt.lines), tt.lines)
				}
				for i := range tt.lines {
					if string(r.Lines[i]) != tt.lines[i] {
						t.Errorf("line %d: got %q, want %q", i, r.Lines[i], tt.lines[i])
					}
				}
				if got, want := string(r.Raw()), strings.Join(tt.lines, ""); got != want {
					t.Errorf("Raw: got %q, want %q", got, want)
				}
				rest, _ := io.ReadAll(br)
				if string(rest) != tt.rest {
					t.Errorf("left unread: got %q, want %q", rest, tt.rest)
				}
			})
		}
	}
}

// Growing one line of a reply must not overwrite the next.
func TestReplyLinesSeparate(t *testing.T) {
	r, err := ReadReply(bufio.NewReader(strings.NewReader("250-a\r\n250 b\r\n")), 512)
	if err != nil {
		t.Fatal(err)
	}
	r.Lines[0] = append(r.Lines[0], "XXXX"...)
	if string(r.Lines[1]) != "250 b\r\n" {
		t.Errorf("got %q, want %q", r.Lines[1], "250 b\r\n")
	}
}

func TestReplyMethods(t *testing.T) {
	tests := []struct {
		lines               []string
		text                string
		temporary, positive bool
	}{
		{[]string{"250 OK\r\n"}, "OK", false, true},
		{[]string{"250-mx Hello\r\n", "250-SIZE\r\n", "250 HELP\r\n"}, "mx Hello\nSIZE\nHELP", false, true},
		{[]string{"354 go ahead\n"}, "go ahead", false, true},
		{[]string{"250\r\n"}, "", false, true},
		{[]string{"421-a\r\n", "421 \r\n"}, "a\n", true, false},
		{[]string{"451 4.3.0 later\r\n"}, "4.3.0 later", true, false},
		{[]string{"554 no\r\n"}, "no", false, false},
	}
	for _, tt := range tests {
		r := &Reply{}
		for _, l := range tt.lines {
			r.Lines = append(r.Lines, []byte(l))
		}
		c := tt.lines[0][:3]
		r.Code = int(c[0]-'0')*100 + int(c[1]-'0')*10 + int(c[2]-'0')
		if got := r.Text(); got != tt.text {
			t.Errorf("%q Text: got %q, want %q", tt.lines, got, tt.text)
		}
		if got := r.Temporary(); got != tt.temporary {
			t.Errorf("%q Temporary: got %v, want %v", tt.lines, got, tt.temporary)
		}
		if got := r.Positive(); got != tt.positive {
			t.Errorf("%q Positive: got %v, want %v", tt.lines, got, tt.positive)
		}
		if got, want := string(r.Raw()), strings.Join(tt.lines, ""); got != want {
			t.Errorf("%q Raw: got %q, want %q", tt.lines, got, want)
		}
	}
}

func TestFormatReply(t *testing.T) {
	tests := []struct {
		code                 int
		enhanced, name, text string
		want                 string
	}{
		{550, "5.7.1", "gate.example", "virus found", "550 5.7.1 gate.example virus found\r\n"},
		{554, "", "gate.example", "too many connections", "554 gate.example too many connections\r\n"},
		{250, "", "", "OK", "250 OK\r\n"},
		{250, "2.0.0", "", "OK", "250 2.0.0 OK\r\n"},
		{221, "", "gate", "", "221 gate\r\n"},
		{250, "", "", "", "250\r\n"},
		{451, "4.3.2", "gate", "first\nsecond", "451-4.3.2 gate first\r\n451 4.3.2 gate second\r\n"},
		{451, "", "gate", "a\nb\nc", "451-gate a\r\n451-gate b\r\n451 gate c\r\n"},
		{451, "", "gate", "a\r\nb\n", "451-gate a\r\n451 gate b\r\n"},
		{451, "", "gate", "a\n\nb", "451-gate a\r\n451-gate\r\n451 gate b\r\n"},
		{550, "5.7.1", "gate", "bad\rname", "550 5.7.1 gate bad name\r\n"},
	}
	for _, tt := range tests {
		if got := string(FormatReply(tt.code, tt.enhanced, tt.name, tt.text)); got != tt.want {
			t.Errorf("FormatReply(%d, %q, %q, %q): got %q, want %q", tt.code, tt.enhanced, tt.name, tt.text, got, tt.want)
		}
	}
}

// What FormatReply writes, ReadReply reads back.
func TestFormatReplyReads(t *testing.T) {
	b := FormatReply(451, "4.3.2", "gate", "one\ntwo\nthree")
	r, err := ReadReply(bufio.NewReader(strings.NewReader(string(b))), 512)
	if err != nil {
		t.Fatal(err)
	}
	if r.Code != 451 || string(r.Raw()) != string(b) {
		t.Errorf("got %d %q, want 451 %q", r.Code, r.Raw(), b)
	}
	if got, want := r.Text(), "4.3.2 gate one\n4.3.2 gate two\n4.3.2 gate three"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func BenchmarkReadReply(b *testing.B) {
	in := "250-mx.example.org Hello client [192.0.2.1]\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n" +
		"250-PIPELINING\r\n250-CHUNKING\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 HELP\r\n"
	r := strings.NewReader(in)
	br := bufio.NewReader(r)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(in)
		br.Reset(r)
		if _, err := ReadReply(br, 512); err != nil {
			b.Fatal(err)
		}
	}
}
