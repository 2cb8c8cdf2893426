package smtp

import "bytes"

// EndOfData is the line that ends a message. DataFilter never forwards it:
// the caller writes it to the MTA once the message may go.
const EndOfData = ".\r\n"

// Where a DataFilter stands in the stream.
type dataState uint8

const (
	atStart dataState = iota // at the start of a line (the zero value: DATA starts there)
	atDot                    // after a "." that started a line
	atDotCR                  // after a ".\r" that started a line
	inLine                   // anywhere else in a line
)

// DataFilter follows the DATA stream from the client, after the MTA's
// 354: it finds the end ("." alone on a line), normalises bare LF line
// endings to CRLF in what is forwarded (so that the MTA and the proxy
// agree where the message ends: a bare "\n.\n" ends the message for both;
// see the SMTP smuggling note below), and dot-unstuffs a copy for the
// spool.
//
// SMTP smuggling: the proxy forwards the client's bytes as they come and
// holds back only the final dot. If a client ended a message with "\n.\n"
// (bare LFs) and the MTA took that as the end while the proxy did not, the
// rest of the "message" would reach the MTA as commands (a second MAIL,
// RCPT, DATA: a message the proxy never scanned, from a sender it never
// saw). Proxy and MTA must therefore agree on where every line ends. The
// filter takes a bare LF as a line end, like the most lenient MTA, and
// forwards it as CRLF, so that even the strictest MTA then sees the same
// line ends, and so the same end of message, as the proxy. A bare CR ("\r"
// not followed by "\n") is left as is: it ends a line for neither side
// (RFC 5321 2.3.8; Postfix, Exim and sendmail end lines at LF only). An MTA
// that did end lines at a bare CR would reopen the hole ("\r.\r\n"), and
// bare CRs would then have to be rewritten too.
//
// Unstuffing follows RFC 5321 4.5.2, as MTAs do: the first "." of every
// line that starts with one (and is not the end) is removed, not only of
// lines starting with "..", so that the spool holds what the MTA will
// deliver and a scanner cannot be shown ".x" where the recipient gets "x".
//
// The zero value is ready for a message.
type DataFilter struct {
	st     dataState
	prevCR bool // in inLine: the last byte seen was a CR
	done   bool
	size   int64
	fwd    out
	spool  out
}

// out builds one of Feed's results without copying while it can: the
// result is a run of p until the first change (a CR inserted, a dot
// removed), then a copy in buf.
type out struct {
	buf    []byte
	copied bool // the result so far is in buf, not in p
	start  int  // p[start:] (up to the scan point) is result not yet in buf
}

func (o *out) begin() { o.copied, o.start = false, 0 }

func (o *out) flush(p []byte, at int) {
	if !o.copied {
		o.buf, o.copied = o.buf[:0], true
	}
	o.buf = append(o.buf, p[o.start:at]...)
}

// insert puts s into the result before p[at].
func (o *out) insert(p []byte, at int, s string) {
	o.flush(p, at)
	o.buf = append(o.buf, s...)
	o.start = at
}

// cut leaves p[at] out of the result.
func (o *out) cut(p []byte, at int) {
	if o.copied || o.start != at {
		o.flush(p, at)
	}
	o.start = at + 1
}

// end returns the result, which stops before p[at].
func (o *out) end(p []byte, at int) []byte {
	if !o.copied {
		return p[o.start:at]
	}
	o.buf = append(o.buf, p[o.start:at]...)
	return o.buf
}

// Feed takes the next bytes the client sent. It returns fwd, the bytes to
// send to the MTA now (normalised; dot-stuffing kept as sent; the
// terminating ".\r\n" line is NOT included, the caller holds it), spool,
// the same content dot-unstuffed (the leading "." removed from every line
// starting with ".", so ".." becomes "."; CRLF line endings) for the spool
// file, n, how many bytes of p were consumed (it stops right after the
// terminating line: the rest of p is commands that followed the message),
// and done when the terminating line was seen. A terminator split across
// Feed calls ("\r\n." then "\r\n") works, as does a message that is
// empty (the very first bytes are ".\r\n") and lines of any length (no
// line length limit in DATA).
//
// fwd and spool are only valid until the next Feed and until p is
// modified: they may be sub-slices of p (when nothing in them needed
// changing) or reuse internal buffers. A "." or ".\r" at the start of a
// line at the end of p is held back from both until the next Feed shows
// whether it is the terminator. The terminator may be ".\r\n" or ".\n";
// either way the caller sends EndOfData. When not done, n is len(p). After
// done, Feed returns (nil, nil, 0, true) until Reset.
func (f *DataFilter) Feed(p []byte) (fwd, spool []byte, n int, done bool) {
	if f.done {
		return nil, nil, 0, true
	}
	f.fwd.begin()
	f.spool.begin()
	// Where in p are the "." and "\r" of a line that starts ".\r"; -1 when
	// they came in an earlier Feed (and were held back).
	dot, cr := -1, -1
	i := 0
	for i < len(p) {
		switch f.st {
		case atStart:
			if p[i] == '.' {
				dot, f.st = i, atDot
				i++
				continue
			}
			f.st, f.prevCR = inLine, false
		case atDot:
			switch p[i] {
			case '\n':
				return f.finish(p, dot, i+1)
			case '\r':
				cr, f.st = i, atDotCR
				i++
				continue
			}
			f.dotLine(p, dot, cr)
			f.st, f.prevCR = inLine, false
		case atDotCR:
			if p[i] == '\n' {
				return f.finish(p, dot, i+1)
			}
			f.dotLine(p, dot, cr)
			f.st, f.prevCR = inLine, true
		case inLine:
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				f.prevCR = p[len(p)-1] == '\r'
				i = len(p)
				continue
			}
			if j > 0 && p[i+j-1] != '\r' || j == 0 && !f.prevCR {
				f.fwd.insert(p, i+j, "\r")
				f.spool.insert(p, i+j, "\r")
			}
			i += j + 1
			f.st = atStart
		}
	}
	end := len(p)
	if f.st == atDot || f.st == atDotCR {
		end = max(dot, 0) // hold the line's "." (and "\r") back
	}
	fwd = f.fwd.end(p, end)
	spool = f.spool.end(p, end)
	f.size += int64(len(spool))
	return fwd, spool, len(p), false
}

// dotLine handles a line found to start with "." without being the
// terminator: the dot (and a CR after it) held back from an earlier Feed
// go to fwd; spool loses the dot.
func (f *DataFilter) dotLine(p []byte, dot, cr int) {
	crHeld := f.st == atDotCR && cr < 0
	switch {
	case dot < 0 && crHeld:
		f.fwd.insert(p, 0, ".\r")
	case dot < 0:
		f.fwd.insert(p, 0, ".")
	default:
		f.spool.cut(p, dot)
	}
	if crHeld {
		f.spool.insert(p, 0, "\r")
	}
}

// finish ends the message at the terminator line that starts at dot (or
// started in an earlier Feed) and whose LF is p[n-1].
func (f *DataFilter) finish(p []byte, dot, n int) (fwd, spool []byte, _ int, done bool) {
	end := max(dot, 0)
	fwd = f.fwd.end(p, end)
	spool = f.spool.end(p, end)
	f.size += int64(len(spool))
	f.done = true
	return fwd, spool, n, true
}

// Size returns the number of spool bytes produced so far.
func (f *DataFilter) Size() int64 { return f.size }

// Reset makes f ready for the next message, keeping its buffers.
func (f *DataFilter) Reset() {
	*f = DataFilter{fwd: out{buf: f.fwd.buf[:0]}, spool: out{buf: f.spool.buf[:0]}}
}
