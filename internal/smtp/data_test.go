package smtp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// refFilter is DataFilter written the slow, obvious way, line by line: the
// model the tests and fuzzers hold DataFilter to.
func refFilter(in []byte) (fwd, spool []byte, n int, done bool) {
	pos := 0
	for pos < len(in) {
		j := bytes.IndexByte(in[pos:], '\n')
		if j < 0 { // the last line, unfinished
			line := in[pos:]
			if string(line) == "." || string(line) == ".\r" {
				break // could still be the end: held back
			}
			fwd = append(fwd, line...)
			spool = append(spool, bytes.TrimPrefix(line, []byte("."))...)
			break
		}
		body := bytes.TrimSuffix(in[pos:pos+j], []byte("\r"))
		if string(body) == "." {
			return fwd, spool, pos + j + 1, true
		}
		fwd = append(append(fwd, body...), '\r', '\n')
		spool = append(append(spool, bytes.TrimPrefix(body, []byte("."))...), '\r', '\n')
		pos += j + 1
	}
	return fwd, spool, len(in), false
}

// feedPieces feeds the pieces in turn, as a session would, and gathers the
// results. It checks Feed's promises on the way: all of a piece consumed
// until done, Size the spool so far.
func feedPieces(t testing.TB, f *DataFilter, pieces ...[]byte) (fwd, spool []byte, n int, done bool) {
	t.Helper()
	for _, p := range pieces {
		fw, sp, k, d := f.Feed(p)
		fwd = append(fwd, fw...)
		spool = append(spool, sp...)
		n += k
		if f.Size() != int64(len(spool)) {
			t.Fatalf("Size: got %d, want %d", f.Size(), len(spool))
		}
		if d {
			return fwd, spool, n, true
		}
		if k != len(p) {
			t.Fatalf("Feed(%q): consumed %d of %d without done", p, k, len(p))
		}
	}
	return fwd, spool, n, false
}

func TestDataFilter(t *testing.T) {
	tests := []struct {
		name   string
		pieces []string
		fwd    string
		spool  string
		n      int
		done   bool
	}{
		{"empty message", []string{".\r\n"}, "", "", 3, true},
		{"empty message bare LF", []string{".\n"}, "", "", 2, true},
		{"empty message then commands", []string{".\r\nQUIT\r\n"}, "", "", 3, true},
		{"simple", []string{"Subject: x\r\n\r\nbody\r\n.\r\n"}, "Subject: x\r\n\r\nbody\r\n", "Subject: x\r\n\r\nbody\r\n", 23, true},
		{"commands after", []string{"a\r\n.\r\nMAIL FROM:<>\r\n"}, "a\r\n", "a\r\n", 6, true},
		{"stuffed dots", []string{"..\r\n...\r\n..x\r\n.\r\n"}, "..\r\n...\r\n..x\r\n", ".\r\n..\r\n.x\r\n", 17, true},
		{"unstuffed dot line", []string{".x\r\n.\r\n"}, ".x\r\n", "x\r\n", 7, true},
		{"dot inside a line", []string{"a.b\r\n a.\r\n.\r\n"}, "a.b\r\n a.\r\n", "a.b\r\n a.\r\n", 13, true},
		{"terminator split", []string{"a\r\n.", "\r\n"}, "a\r\n", "a\r\n", 6, true},
		{"terminator split 3", []string{"a\r", "\n.\r", "\n"}, "a\r\n", "a\r\n", 6, true},
		{"terminator byte by byte", []string{"a", "\r", "\n", ".", "\r", "\n", "Q"}, "a\r\n", "a\r\n", 6, true},
		{"bare LF lines", []string{"a\nb\n\n.\r\n"}, "a\r\nb\r\n\r\n", "a\r\nb\r\n\r\n", 8, true},
		{"bare LF end (smuggling)", []string{"a\r\n\n.\nMAIL FROM:<x>\r\n"}, "a\r\n\r\n", "a\r\n\r\n", 6, true},
		{"LF dot CRLF", []string{"a\n.\r\nRSET\r\n"}, "a\r\n", "a\r\n", 5, true},
		{"bare CR kept", []string{"a\rb\r\n\r.\r\n.\r\n"}, "a\rb\r\n\r.\r\n", "a\rb\r\n\r.\r\n", 12, true},
		{"dot CR x", []string{".\rx\r\n.\r\n"}, ".\rx\r\n", "\rx\r\n", 8, true},
		{"dot CR CR LF", []string{".\r\r\n.\n"}, ".\r\r\n", "\r\r\n", 6, true},
		{"dot held then not end", []string{"a\r\n.", "x\r\n"}, "a\r\n.x\r\n", "a\r\nx\r\n", 7, false},
		{"dot CR held then not end", []string{"a\r\n.\r", "x\r\n"}, "a\r\n.\rx\r\n", "a\r\n\rx\r\n", 8, false},
		{"dot held then CR then not end", []string{".", "\r", "y"}, ".\ry", "\ry", 3, false},
		{"dot held then dot", []string{".", ".", "\r\n"}, "..\r\n", ".\r\n", 4, false},
		{"not done", []string{"abc"}, "abc", "abc", 3, false},
		{"CR held across", []string{"abc\r", "\ndef\n"}, "abc\r\ndef\r\n", "abc\r\ndef\r\n", 9, false},
		{"LF at piece start", []string{"abc", "\n"}, "abc\r\n", "abc\r\n", 4, false},
		{"empty pieces", []string{"", "a\r\n", "", ".\r\n"}, "a\r\n", "a\r\n", 6, true},
		{"long line", []string{strings.Repeat("x", 100000) + "\r\n.\r\n"}, strings.Repeat("x", 100000) + "\r\n",
			strings.Repeat("x", 100000) + "\r\n", 100005, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pieces [][]byte
			for _, p := range tt.pieces {
				pieces = append(pieces, []byte(p))
			}
			var f DataFilter
			fwd, spool, n, done := feedPieces(t, &f, pieces...)
			if string(fwd) != tt.fwd || string(spool) != tt.spool || n != tt.n || done != tt.done {
				t.Errorf("got (%q, %q, %d, %v), want (%q, %q, %d, %v)", fwd, spool, n, done, tt.fwd, tt.spool, tt.n, tt.done)
			}
			all := []byte(strings.Join(tt.pieces, ""))
			rf, rs, rn, rd := refFilter(all)
			if string(rf) != tt.fwd || string(rs) != tt.spool || rn != tt.n || rd != tt.done {
				t.Errorf("model disagrees with the table: got (%q, %q, %d, %v)", rf, rs, rn, rd)
			}
		})
	}
}

func TestDataFilterAfterDoneAndReset(t *testing.T) {
	var f DataFilter
	if _, _, n, done := f.Feed([]byte("a\r\n.\r\nQUIT\r\n")); n != 6 || !done {
		t.Fatalf("got (%d, %v), want (6, true)", n, done)
	}
	if fwd, spool, n, done := f.Feed([]byte("QUIT\r\n")); fwd != nil || spool != nil || n != 0 || !done {
		t.Errorf("after done: got (%q, %q, %d, %v), want (nil, nil, 0, true)", fwd, spool, n, done)
	}
	f.Reset()
	if f.Size() != 0 {
		t.Errorf("Size after Reset: got %d, want 0", f.Size())
	}
	// A held "." must not survive a Reset either.
	f.Feed([]byte("x\r\n."))
	f.Reset()
	fwd, spool, n, done := f.Feed([]byte("\r\n.\r\n"))
	if string(fwd) != "\r\n" || string(spool) != "\r\n" || n != 5 || !done {
		t.Errorf("after Reset: got (%q, %q, %d, %v), want (%q, %q, 5, true)", fwd, spool, n, done, "\r\n", "\r\n")
	}
}

// messages is a set of awkward messages for the property tests.
var messages = []string{
	"",
	".\r\n",
	".\n",
	".",
	".\r",
	"..",
	"a\r\n.\r\n",
	"a\n.\nMAIL FROM:<evil>\r\nRCPT TO:<x>\r\nDATA\r\n",
	"Subject: hi\r\n\r\n..\r\n...\r\n.x\r\n..x\r\n\r\n.\r\nQUIT\r\n",
	"\r\n\r\n\n\n\r\r\n.\r\r\n..\r\n.\r\n",
	"line\rwith\rcr\r\n.\r.\n\r.\r\n.\n",
	"no end at all\r\n..\r\n.",
	"a\n\n.\n",
	"\n.\r\n",
	".x\n.\rx\n.\r\r\n.\r\n",
}

// Any split of a message, into two pieces or into single bytes, gives
// the same result as feeding it whole, and the result is the model's.
func TestDataFilterSplits(t *testing.T) {
	for _, m := range messages {
		in := []byte(m)
		var f DataFilter
		fwd, spool, n, done := feedPieces(t, &f, in)
		rf, rs, rn, rd := refFilter(in)
		if !bytes.Equal(fwd, rf) || !bytes.Equal(spool, rs) || n != rn || done != rd {
			t.Errorf("%q whole: got (%q, %q, %d, %v), want (%q, %q, %d, %v)", m, fwd, spool, n, done, rf, rs, rn, rd)
		}
		for k := 0; k <= len(in); k++ {
			f.Reset()
			f2, s2, n2, d2 := feedPieces(t, &f, in[:k], in[k:])
			if !bytes.Equal(f2, fwd) || !bytes.Equal(s2, spool) || n2 != n || d2 != done {
				t.Errorf("%q split at %d: got (%q, %q, %d, %v), want (%q, %q, %d, %v)", m, k, f2, s2, n2, d2, fwd, spool, n, done)
			}
		}
		var bytewise [][]byte
		for i := range in {
			bytewise = append(bytewise, in[i:i+1])
		}
		f.Reset()
		f3, s3, n3, d3 := feedPieces(t, &f, bytewise...)
		if !bytes.Equal(f3, fwd) || !bytes.Equal(s3, spool) || n3 != n || d3 != done {
			t.Errorf("%q byte by byte: got (%q, %q, %d, %v), want (%q, %q, %d, %v)", m, f3, s3, n3, d3, fwd, spool, n, done)
		}
	}
}

// Random messages built from the bytes that matter, fed in random pieces.
func TestDataFilterRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte(".\r\nab")
	for range 20000 {
		in := make([]byte, rng.IntN(40))
		for i := range in {
			in[i] = alphabet[rng.IntN(len(alphabet))]
		}
		var pieces [][]byte
		for rest := in; len(rest) > 0; {
			k := 1 + rng.IntN(len(rest))
			pieces, rest = append(pieces, rest[:k]), rest[k:]
		}
		var f DataFilter
		fwd, spool, n, done := feedPieces(t, &f, pieces...)
		rf, rs, rn, rd := refFilter(in)
		if !bytes.Equal(fwd, rf) || !bytes.Equal(spool, rs) || n != rn || done != rd {
			t.Fatalf("%q in %q: got (%q, %q, %d, %v), want (%q, %q, %d, %v)", in, pieces, fwd, spool, n, done, rf, rs, rn, rd)
		}
	}
}

// bigMessage is a message of about size bytes that looks like mail: headers,
// then base64 lines of 76 characters, with a few stuffed dots. With bareLF
// its lines end in LF only (the slow path: every line is copied).
func bigMessage(size int, bareLF bool) []byte {
	eol := "\r\n"
	if bareLF {
		eol = "\n"
	}
	var b bytes.Buffer
	b.Grow(size + 1024)
	fmt.Fprintf(&b, "From: a@example.org%sTo: b@example.org%sSubject: big%s%s", eol, eol, eol, eol)
	rng := rand.New(rand.NewPCG(3, 4))
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	line := make([]byte, 76)
	for n := 0; b.Len() < size; n++ {
		for i := range line {
			line[i] = b64[rng.IntN(len(b64))]
		}
		if n%1000 == 0 {
			b.WriteString("..a line that was dot-stuffed")
			b.WriteString(eol)
		}
		b.Write(line)
		b.WriteString(eol)
	}
	b.WriteString("." + eol + "QUIT" + eol)
	return b.Bytes()
}

func feedChunks(f *DataFilter, in []byte, chunk int) (fwd, spool int, n int, done bool) {
	for off := 0; off < len(in); off += chunk {
		fw, sp, k, d := f.Feed(in[off:min(off+chunk, len(in))])
		fwd += len(fw)
		spool += len(sp)
		n += k
		if d {
			return fwd, spool, n, true
		}
	}
	return fwd, spool, n, false
}

// A 20 MB message in the 32 KiB pieces a session reads.
func TestDataFilterBig(t *testing.T) {
	for _, bareLF := range []bool{false, true} {
		in := bigMessage(20<<20, bareLF)
		rf, rs, rn, rd := refFilter(in)
		var f DataFilter
		var fwd, spool []byte
		n, done := 0, false
		for off := 0; off < len(in) && !done; off += 32 << 10 {
			fw, sp, k, d := f.Feed(in[off:min(off+32<<10, len(in))])
			fwd, spool, n, done = append(fwd, fw...), append(spool, sp...), n+k, d
		}
		if !done || n != rn || !rd || !bytes.Equal(fwd, rf) || !bytes.Equal(spool, rs) {
			t.Errorf("bareLF=%v: got done=%v n=%d fwd %d bytes spool %d bytes, want done n=%d fwd %d spool %d (equal: %v %v)",
				bareLF, done, n, len(fwd), len(spool), rn, len(rf), len(rs), bytes.Equal(fwd, rf), bytes.Equal(spool, rs))
		}
		if got := string(in[n:]); !strings.HasPrefix(got, "QUIT") {
			t.Errorf("bareLF=%v: left unconsumed %q, want QUIT", bareLF, got)
		}
		if f.Size() != int64(len(rs)) {
			t.Errorf("bareLF=%v: Size got %d, want %d", bareLF, f.Size(), len(rs))
		}
	}
}

// Clean CRLF mail goes through without a copy or an allocation.
func TestDataFilterAllocs(t *testing.T) {
	in := bigMessage(1<<20, false)
	var f DataFilter
	if n := testing.AllocsPerRun(5, func() { f.Reset(); feedChunks(&f, in, 32<<10) }); n != 0 {
		t.Errorf("got %v allocations per message, want 0", n)
	}
}

// BenchmarkDataFilter feeds a 20 MB message in 32 KiB pieces; MB/s is of
// the client's bytes. "crlf" is ordinary mail; "bareLF" has every line end
// rewritten (the worst case: everything copied, twice).
func BenchmarkDataFilter(b *testing.B) {
	for _, bc := range []struct {
		name   string
		bareLF bool
	}{{"crlf", false}, {"bareLF", true}} {
		b.Run(bc.name, func(b *testing.B) {
			in := bigMessage(20<<20, bc.bareLF)
			var f DataFilter
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				f.Reset()
				if _, _, _, done := feedChunks(&f, in, 32<<10); !done {
					b.Fatal("no end found")
				}
			}
		})
	}
}
