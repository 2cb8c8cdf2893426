package lookup

import (
	"errors"
	"testing"
)

// The remote helper's answer is untrusted input.
func FuzzParseRemote(f *testing.F) {
	f.Add("40000 , 9199 : ORIGIN : 198.51.100.2 : 25 : alice\r\n")
	f.Add("40000 , 9199 : ERROR : NO-USER\r\n")
	f.Add("40000,9199:ORIGIN:1.2.3.4:0:")
	f.Add(":::::")
	f.Fuzz(func(t *testing.T, s string) {
		dst, ident, err := parseRemote(s, 40000, 9199)
		if err != nil {
			var le *lookupError
			if !errors.As(err, &le) {
				t.Fatalf("error %v has no kind", err)
			}
			return
		}
		if !dst.Addr().Is4() || dst.Port() == 0 || len(ident) > 20 || cleanIdent(ident) != ident {
			t.Fatalf("accepted %q: %v %q", s, dst, ident)
		}
	})
}
