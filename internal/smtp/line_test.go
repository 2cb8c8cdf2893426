package smtp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

type lineResult struct {
	line    string
	tooLong bool
	err     error
}

// readers gives the ways a test input is read: whole, one byte at a time
// (lines arriving in pieces), and through bufio's smallest buffer (lines
// longer than the buffer).
var readers = []struct {
	name string
	new  func(s string) *bufio.Reader
}{
	{"whole", func(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }},
	{"onebyte", func(s string) *bufio.Reader { return bufio.NewReader(iotest.OneByteReader(strings.NewReader(s))) }},
	{"smallbuf", func(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 16) }},
	{"smallbuf-onebyte", func(s string) *bufio.Reader {
		return bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(s)), 16)
	}},
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 100)
	tests := []struct {
		name string
		in   string
		max  int
		want []lineResult
	}{
		{"empty input", "", 10, []lineResult{{"", false, io.EOF}}},
		{"one line", "HELO a\r\n", 100, []lineResult{{"HELO a\r\n", false, nil}, {"", false, io.EOF}}},
		{"two lines", "a\r\nb\r\n", 100, []lineResult{{"a\r\n", false, nil}, {"b\r\n", false, nil}, {"", false, io.EOF}}},
		{"bare LF", "a\nb\r\n", 100, []lineResult{{"a\n", false, nil}, {"b\r\n", false, nil}, {"", false, io.EOF}}},
		{"empty lines", "\n\r\n", 100, []lineResult{{"\n", false, nil}, {"\r\n", false, nil}, {"", false, io.EOF}}},
		{"final line without LF", "a\r\nQUIT", 100, []lineResult{{"a\r\n", false, nil}, {"QUIT", false, io.ErrUnexpectedEOF}, {"", false, io.EOF}}},
		{"bare CR is no end", "a\rb\n", 100, []lineResult{{"a\rb\n", false, nil}, {"", false, io.EOF}}},
		{"exactly max", "abcd\r\n", 6, []lineResult{{"abcd\r\n", false, nil}, {"", false, io.EOF}}},
		{"one over max", "abcde\r\n", 6, []lineResult{{"abcde\r", true, nil}, {"", false, io.EOF}}},
		{"too long then normal", long + "\r\nNOOP\r\n", 10,
			[]lineResult{{long[:10], true, nil}, {"NOOP\r\n", false, nil}, {"", false, io.EOF}}},
		{"two too long then normal", long + "\n" + long + "\r\nRSET\r\n", 8,
			[]lineResult{{long[:8], true, nil}, {long[:8], true, nil}, {"RSET\r\n", false, nil}, {"", false, io.EOF}}},
		{"too long at EOF", long, 10, []lineResult{{long[:10], true, io.ErrUnexpectedEOF}, {"", false, io.EOF}}},
		{"no limit", long + "\r\n", 0, []lineResult{{long + "\r\n", false, nil}, {"", false, io.EOF}}},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				br := rd.new(tt.in)
				for k, w := range tt.want {
					line, tooLong, err := ReadLine(br, tt.max)
					if string(line) != w.line || tooLong != w.tooLong || err != w.err {
						t.Fatalf("read %d: got (%q, %v, %v), want (%q, %v, %v)", k, line, tooLong, err, w.line, w.tooLong, w.err)
					}
				}
			})
		}
	}
}

// A line is the caller's own: reading the next one does not change it.
func TestReadLineOwned(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader("first\r\nsecond\r\n"), 16)
	a, _, _ := ReadLine(br, 100)
	b, _, _ := ReadLine(br, 100)
	if string(a) != "first\r\n" || string(b) != "second\r\n" {
		t.Errorf("got %q, %q, want %q, %q", a, b, "first\r\n", "second\r\n")
	}
}

func TestAppendLine(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("abc\r\n" + strings.Repeat("y", 50) + "\n"))
	buf := []byte("pre:")
	buf, tooLong, err := AppendLine(buf, br, 100)
	if string(buf) != "pre:abc\r\n" || tooLong || err != nil {
		t.Fatalf("got (%q, %v, %v), want (%q, false, nil)", buf, tooLong, err, "pre:abc\r\n")
	}
	buf, tooLong, err = AppendLine(buf[:0], br, 5)
	if string(buf) != "yyyyy" || !tooLong || err != nil {
		t.Fatalf("got (%q, %v, %v), want (%q, true, nil)", buf, tooLong, err, "yyyyy")
	}
	buf, tooLong, err = AppendLine(buf, br, 5)
	if string(buf) != "yyyyy" || tooLong || err != io.EOF {
		t.Fatalf("got (%q, %v, %v), want (%q, false, EOF)", buf, tooLong, err, "yyyyy")
	}
}

// A read error other than EOF comes back as it is, with what was read.
func TestReadLineError(t *testing.T) {
	boom := errors.New("boom")
	br := bufio.NewReader(io.MultiReader(strings.NewReader("MAIL FR"), iotest.ErrReader(boom)))
	line, tooLong, err := ReadLine(br, 100)
	if string(line) != "MAIL FR" || tooLong || !errors.Is(err, boom) {
		t.Errorf("got (%q, %v, %v), want (%q, false, %v)", line, tooLong, err, "MAIL FR", boom)
	}
}

func BenchmarkReadLine(b *testing.B) {
	var sb strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&sb, "RCPT TO:<user%d@example.org>\r\n", i)
	}
	in := sb.String()
	r := strings.NewReader(in)
	br := bufio.NewReader(r)
	buf := make([]byte, 0, 512)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(in)
		br.Reset(r)
		for {
			var err error
			buf, _, err = AppendLine(buf[:0], br, 512)
			if err != nil {
				break
			}
		}
	}
}
