package smtp

import (
	"bufio"
	"errors"
	"io"
)

// ReadLine reads one line from br, up to and including its LF. A line
// longer than max bytes (terminator included) is consumed up to its LF
// and reported with tooLong=true (line then holds only its first max
// bytes). err is io.EOF only when nothing was read; a final line without
// LF followed by EOF returns the bytes with io.ErrUnexpectedEOF.
//
// max <= 0 means no limit. The returned line is the caller's own (it does
// not alias br's buffer). Any other read error (a deadline, a reset) is
// returned as is, with the bytes of the line read before it.
func ReadLine(br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	return AppendLine(nil, br, max)
}

// AppendLine is ReadLine appending the line to dst, for callers that reuse
// a buffer: it returns dst extended by the line (at most max bytes of it).
// With io.EOF, dst is returned unchanged.
func AppendLine(dst []byte, br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	total := 0
	for {
		// ReadSlice hands out br's own buffer, so an over-long line is
		// skipped without being copied anywhere: only its first max bytes
		// are kept, and the read goes on to the LF so that the next call
		// starts on the next line (no desynchronisation).
		frag, e := br.ReadSlice('\n')
		keep := frag
		if max > 0 {
			if room := max - total; room < len(keep) {
				if room < 0 {
					room = 0
				}
				keep = keep[:room]
			}
		}
		dst = append(dst, keep...)
		total += len(frag)
		switch {
		case e == nil:
			return dst, max > 0 && total > max, nil
		case errors.Is(e, bufio.ErrBufferFull):
			continue
		case e == io.EOF:
			if total == 0 {
				return dst, false, io.EOF
			}
			return dst, max > 0 && total > max, io.ErrUnexpectedEOF
		default:
			return dst, max > 0 && total > max, e
		}
	}
}
