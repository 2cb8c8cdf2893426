package rphd

import (
	"bytes"
	"testing"
)

// Datagrams from the network: anything decodes or is refused, and what
// decodes encodes back to the same bytes.
func FuzzUnmarshal(f *testing.F) {
	d := &Datagram{Magic: Magic, Version: Version, Flags: FlagReply | FlagFound}
	d.SetIdent("alice")
	f.Add(d.Marshal())
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Unmarshal(b)
		if err != nil {
			return
		}
		if !bytes.Equal(d.Marshal(), b) {
			t.Fatalf("%x does not survive a round trip", b)
		}
		if len(d.IdentString()) > 32 {
			t.Fatal("ident longer than its field")
		}
	})
}
