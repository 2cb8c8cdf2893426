package loadavg

import (
	"encoding/binary"
	"runtime"
	"testing"
)

func TestParse(t *testing.T) {
	b := make([]byte, 24)
	binary.NativeEndian.PutUint32(b, 3072)
	binary.NativeEndian.PutUint64(b[16:], 2048)
	if got, err := parse(b); err != nil || got != 1.5 {
		t.Errorf("24 bytes: got %v, %v; want 1.5", got, err)
	}
	b = make([]byte, 16)
	binary.NativeEndian.PutUint32(b, 512)
	binary.NativeEndian.PutUint32(b[12:], 1024)
	if got, err := parse(b); err != nil || got != 0.5 {
		t.Errorf("16 bytes: got %v, %v; want 0.5", got, err)
	}
	for _, bad := range [][]byte{nil, make([]byte, 20), make([]byte, 24)} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%d bytes) succeeded", len(bad))
		}
	}
}

func TestGet(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	if l, err := Get(); err != nil || l < 0 {
		t.Fatalf("Get: %v, %v", l, err)
	}
}
