package rphd

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"testing"
)

// The wire layout, byte by byte, as REFERENCE §3 gives it.
func TestLayout(t *testing.T) {
	d := &Datagram{Magic: Magic, Cookie: 0x01020304, Secret: 0xa0b0c0d0, Version: Version,
		Flags: FlagReply | FlagFound, Src: [4]byte{192, 0, 2, 1}, Dst: [4]byte{198, 51, 100, 2},
		SrcPort: 40000, DstPort: 25, MAC: [6]byte{1, 2, 3, 4, 5, 6}}
	d.SetIdent("10.9.0.2")
	b := d.Marshal()
	want := "52504844" + "01020304" + "a0b0c0d0" + "0402" + "0012" + "c0000201" + "c6336402" + "9c40" + "0019" +
		hex.EncodeToString(append([]byte("10.9.0.2"), make([]byte, 24)...)) + "010203040506"
	if got := hex.EncodeToString(b); got != want {
		t.Errorf("datagram:\n got %s\nwant %s", got, want)
	}
	back, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, d) {
		t.Errorf("round trip: got %+v, want %+v", back, d)
	}
	if back.IdentString() != "10.9.0.2" {
		t.Errorf("ident %q", back.IdentString())
	}
	for _, n := range []int{0, 65, 67} {
		if _, err := Unmarshal(make([]byte, n)); err == nil {
			t.Errorf("Unmarshal of %d bytes: no error", n)
		}
	}
	long := &Datagram{}
	long.SetIdent(string(bytes.Repeat([]byte("x"), 40)))
	if n := len(long.IdentString()); n != 31 {
		t.Errorf("a 40-byte ident is kept as %d bytes, want 31 and the NUL", n)
	}
}
