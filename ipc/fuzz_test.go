package ipc

import (
	"encoding/binary"
	"errors"
	"os"
	"reflect"
	"testing"
)

// FuzzDecode feeds decodePacket arbitrary packets. Whatever it gets, it
// must not panic; what it rejects wraps ErrMalformed with every descriptor
// closed; what it accepts re-encodes (the Send path) to a packet that
// decodes to the same message.
func FuzzDecode(f *testing.F) {
	for typ, v := range samples() {
		for _, reply := range []bool{false, true} {
			p, err := encodePacket(typ, uint32(typ)*1000+1, reply, v)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(p)
		}
		p, err := encodePacket(typ, 0, false, catalogue[typ].new())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add(packet(MsgAck, 0, 0, 1, []byte{0x80}))                    // {}
	f.Add(packet(MsgAck, 0, 0, 1, []byte{0xc0}))                    // nil
	f.Add(packet(MsgAck, 0, 0, 1, []byte{0x91, 0xa1, 'x'}))         // ["x"], a struct as an array
	f.Add(packet(MsgCtlRequest, 0, 0, 1, []byte{0xdd, 0xff, 0xff})) // truncated array32
	f.Add(packet(MsgDstAnswer, 0, 0, 1, []byte{0x81, 0xa3, 'd', 's', 't', 0xc4, 0x01, 0x00}))
	f.Add(packet(999, 0, 0, 1, []byte{0x80}))
	f.Add([]byte{0, 4})

	f.Fuzz(func(t *testing.T, p []byte) {
		m := &Msg{}
		// Give a known type the descriptors it needs, so that the payload
		// decoder is reached for every type.
		var files []*os.File
		if len(p) >= 2 {
			if s, ok := catalogue[Type(binary.BigEndian.Uint16(p))]; ok {
				files = devNulls(t, s.fds)
				m.Files = append([]*os.File(nil), files...)
			}
		}
		got, err := decodePacket(p, m)
		if err != nil {
			if got != nil {
				t.Fatalf("decodePacket returned a message with the error %v", err)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %q does not wrap ErrMalformed", err)
			}
			for i, f := range files {
				if m.Files[i] != nil || !errors.Is(f.Close(), os.ErrClosed) {
					t.Fatalf("descriptor %d of a rejected packet left open", i)
				}
			}
			return
		}
		defer got.Close()
		s := catalogue[got.Type]
		if reflect.TypeOf(got.Payload) != reflect.TypeOf(s.new()) {
			t.Fatalf("%v payload is %T, want %T", got.Type, got.Payload, s.new())
		}
		q, err := encodePacket(got.Type, got.ID, got.Reply, got.Payload)
		if err != nil {
			t.Fatalf("accepted %v %+v does not re-encode: %v", got.Type, got.Payload, err)
		}
		m2 := &Msg{Files: devNulls(t, s.fds)}
		again, err := decodePacket(q, m2)
		if err != nil {
			t.Fatalf("re-encoded %v %+v (%x) does not decode: %v", got.Type, got.Payload, q, err)
		}
		again.Close()
		if again.Type != got.Type || again.ID != got.ID || again.Reply != got.Reply {
			t.Fatalf("header %v/%d/%v came back as %v/%d/%v",
				got.Type, got.ID, got.Reply, again.Type, again.ID, again.Reply)
		}
		if !reflect.DeepEqual(again.Payload, got.Payload) {
			t.Fatalf("payload %#v came back as %#v", got.Payload, again.Payload)
		}
	})
}
