package logx

import "strings"

// Escape makes s safe to write where a byte could mean more than itself:
// a log line, the status file, `smtpgatectl stats`, a lock file, the
// action script's environment. Control bytes (\r and \n included), ESC,
// DEL and every byte from 0x80 up are written as \xNN, so that a string a
// client or a session worker chose cannot end a line, forge another one,
// or drive a terminal. Printable ASCII is kept as it is.
func Escape(s string) string {
	i := 0
	for i < len(s) && !unsafeByte(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if !unsafeByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteString(`\x`)
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

func unsafeByte(c byte) bool { return c < 0x20 || c >= 0x7f }
