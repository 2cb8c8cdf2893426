package smtp

import (
	"bytes"
	"strconv"
)

// Extensions are the EHLO keywords of interest, as the MTA advertised them.
type Extensions struct {
	Pipelining, Auth, StartTLS, Enhanced, Chunking, BinaryMIME, XExch50, XClient, Size bool

	// AuthMechs are the words after AUTH (or AUTH=).
	AuthMechs []string

	// SizeMax is SIZE's parameter: the largest message the MTA takes;
	// 0 when SIZE came without one (or with 0: no limit) or was not
	// advertised.
	SizeMax int64
}

// RewriteEHLO inspects a 250 EHLO reply and hides the named keywords
// (upper case, e.g. "CHUNKING", "BINARYMIME", "XEXCH50", "XCLIENT") by
// overwriting their 4th letter with '*' in place, so line lengths stay
// ("250-CHU*KING"). It returns what was advertised before hiding. It
// never touches the first line (the greeting line of the EHLO reply).
//
// A reply whose code is not 250 is left alone and advertises nothing.
// Keywords match case-insensitively; a keyword ends at a blank or '=' (the
// old "AUTH=LOGIN PLAIN" form). AuthMechs gathers the words of every AUTH
// line, as sent, without repeating a word (compared case-insensitively).
// A hide entry shorter than four letters cannot be hidden and is ignored.
func RewriteEHLO(r *Reply, hide []string) Extensions {
	var x Extensions
	if r.Code != 250 {
		return x
	}
	for _, l := range r.Lines[min(1, len(r.Lines)):] {
		t := lineText(l)
		k := 0
		for k < len(t) && !isBlank(t[k]) && t[k] != '=' {
			k++
		}
		kw := t[:k]
		switch {
		case equalFoldASCII(kw, "PIPELINING"):
			x.Pipelining = true
		case equalFoldASCII(kw, "AUTH"):
			x.Auth = true
			x.AuthMechs = addMechs(x.AuthMechs, t[k:])
		case equalFoldASCII(kw, "STARTTLS"):
			x.StartTLS = true
		case equalFoldASCII(kw, "ENHANCEDSTATUSCODES"):
			x.Enhanced = true
		case equalFoldASCII(kw, "CHUNKING"):
			x.Chunking = true
		case equalFoldASCII(kw, "BINARYMIME"):
			x.BinaryMIME = true
		case equalFoldASCII(kw, "XEXCH50"):
			x.XExch50 = true
		case equalFoldASCII(kw, "XCLIENT"):
			x.XClient = true
		case equalFoldASCII(kw, "SIZE"):
			x.Size = true
			f := bytes.Fields(t[k:])
			if len(f) > 0 {
				if n, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil && n > 0 {
					x.SizeMax = n
				}
			}
		}
		for _, h := range hide {
			if len(h) >= 4 && equalFoldASCII(kw, h) {
				kw[3] = '*' // kw aliases the line: rewritten in place
				break
			}
		}
	}
	return x
}

// addMechs appends the words of s ("=LOGIN PLAIN" or " PLAIN LOGIN") that
// mechs does not hold yet.
func addMechs(mechs []string, s []byte) []string {
	if len(s) > 0 && s[0] == '=' {
		s = s[1:]
	}
next:
	for _, w := range bytes.Fields(s) {
		for _, m := range mechs {
			if bytes.EqualFold(w, []byte(m)) {
				continue next
			}
		}
		mechs = append(mechs, string(w))
	}
	return mechs
}
