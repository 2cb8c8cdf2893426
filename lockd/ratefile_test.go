package lockd

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleRecord() *record {
	return &record{
		Client: "192.0.2.1-alice", Generation: 20261122000000, Start: 1795000000,
		Count: [nCounters]uint64{3, 1, 4, 12093, 0, 1, 0},
		Quota: [nCounters]uint64{20, 0, 100, 0, 0, 0, 5},
	}
}

func TestRecordFormat(t *testing.T) {
	r := sampleRecord()
	b := r.marshal()
	body := `smtp-gated-ratelimit 1
client 192.0.2.1-alice
generation 20261122000000
start 1795000000
connections 3 20
messages 1 0
recipients 4 100
bytes 12093 0
mailfrom_rejects 0 0
rcptto_rejects 1 0
auth_rejects 0 5
`
	want := body + fmt.Sprintf("crc32 %08x\n", crc32.ChecksumIEEE([]byte(body)))
	if string(b) != want {
		t.Fatalf("marshal:\n%s\nwant:\n%s", b, want)
	}
	got, err := parseRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *r {
		t.Fatalf("parse(marshal(r)) = %+v, want %+v", got, r)
	}
	// Extremes survive too.
	r.Generation, r.Count[0], r.Quota[6] = ^uint64(0), ^uint64(0), ^uint64(0)
	if got, err := parseRecord(r.marshal()); err != nil || *got != *r {
		t.Fatalf("extremes: %+v, %v", got, err)
	}
}

// Every truncation, every flipped bit and a table of damaged files are
// found corrupt, never read as another record.
func TestRecordCorrupt(t *testing.T) {
	b := sampleRecord().marshal()
	for n := range len(b) {
		if _, err := parseRecord(b[:n]); !errors.Is(err, errCorrupt) {
			t.Fatalf("truncated to %d bytes: err %v, want errCorrupt", n, err)
		}
	}
	for i := range len(b) {
		for bit := range 8 {
			c := bytes.Clone(b)
			c[i] ^= 1 << bit
			if _, err := parseRecord(c); !errors.Is(err, errCorrupt) {
				t.Fatalf("bit %d of byte %d flipped: err %v, want errCorrupt", bit, i, err)
			}
		}
	}
	reseal := func(body string) []byte {
		return fmt.Appendf(nil, "%scrc32 %08x\n", body, crc32.ChecksumIEEE([]byte(body)))
	}
	good := string(b[:bytes.LastIndex(b, []byte("crc32 "))])
	for name, body := range map[string]string{
		"magic":          strings.Replace(good, "ratelimit 1", "ratelimit 2", 1),
		"extra line":     good + "extra 1\n",
		"missing line":   strings.Replace(good, "auth_rejects 0 5\n", "", 1),
		"order":          strings.Replace(good, "connections 3 20\nmessages 1 0\n", "messages 1 0\nconnections 3 20\n", 1),
		"plus sign":      strings.Replace(good, "connections 3 20", "connections +3 20", 1),
		"leading zero":   strings.Replace(good, "connections 3 20", "connections 03 20", 1),
		"negative":       strings.Replace(good, "connections 3 20", "connections -3 20", 1),
		"overflow":       strings.Replace(good, "connections 3 20", "connections 18446744073709551616 20", 1),
		"two spaces":     strings.Replace(good, "connections 3 20", "connections 3  20", 1),
		"three values":   strings.Replace(good, "connections 3 20", "connections 3 20 1", 1),
		"tab":            strings.Replace(good, "connections 3 20", "connections\t3 20", 1),
		"bad client":     strings.Replace(good, "client 192.0.2.1-alice", "client ../etc/passwd", 1),
		"client spaces":  strings.Replace(good, "client 192.0.2.1-alice", "client 192.0.2.1 x", 1),
		"start too big":  strings.Replace(good, "start 1795000000", "start 9223372036854775807", 1),
		"crlf":           strings.ReplaceAll(good, "\n", "\r\n"),
		"empty":          "",
		"upper-case sum": "",
	} {
		in := reseal(body)
		if name == "upper-case sum" {
			in = []byte(strings.ToUpper(string(b)))
		}
		if r, err := parseRecord(in); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: parse gave %+v, %v; want errCorrupt", name, r, err)
		}
	}
	if _, err := parseRecord(bytes.Repeat([]byte("x\n"), maxFileSize)); !errors.Is(err, errCorrupt) {
		t.Errorf("an oversized file: %v", err)
	}
}

func TestReadWriteRecord(t *testing.T) {
	dir := t.TempDir()
	r := sampleRecord()
	if err := writeAtomic(dir, r.Client, r.marshal(), ratePerm); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, r.Client)
	got, err := readRecord(path)
	if err != nil || *got != *r {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != ratePerm {
		t.Errorf("mode %v, want %v", st.Mode().Perm(), os.FileMode(ratePerm))
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("files after writeAtomic: %v, want the record alone", ents)
	}
	if r, err := readRecord(filepath.Join(dir, "192.0.2.9")); r != nil || err != nil {
		t.Errorf("missing file: %v, %v; want nil, nil", r, err)
	}
	os.Symlink(path, filepath.Join(dir, "192.0.2.8"))
	if _, err := readRecord(filepath.Join(dir, "192.0.2.8")); !errors.Is(err, errCorrupt) {
		t.Errorf("symbolic link: %v, want errCorrupt", err)
	}
	os.Mkdir(filepath.Join(dir, "192.0.2.7"), 0o755)
	if _, err := readRecord(filepath.Join(dir, "192.0.2.7")); !errors.Is(err, errCorrupt) {
		t.Errorf("directory: %v, want errCorrupt", err)
	}
}

// FuzzParseRecord: the parser never panics, and what it accepts is
// exactly what marshal writes for it.
func FuzzParseRecord(f *testing.F) {
	f.Add(sampleRecord().marshal())
	r := sampleRecord()
	r.Client = "2001_db8__1"
	f.Add(r.marshal())
	f.Add([]byte("smtp-gated-ratelimit 1\n"))
	f.Add([]byte("crc32 00000000\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord(b)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("error %v does not wrap errCorrupt", err)
			}
			return
		}
		if m := r.marshal(); !bytes.Equal(m, b) {
			t.Fatalf("accepted %q, which marshals as %q", b, m)
		}
	})
}
