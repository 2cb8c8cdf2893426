package lockd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// smtp-gated -L prints a rate-limit file: client, generation, start, then
// one row per counter with quota and count; a damaged file is an error.
func TestDumpRateFile(t *testing.T) {
	r := &record{Client: "192.0.2.1", Generation: 7, Start: 1795000000}
	r.Count[0], r.Quota[0] = 3, 20
	r.Count[2], r.Quota[2] = 4, 100
	p := filepath.Join(t.TempDir(), "192.0.2.1")
	if err := os.WriteFile(p, r.marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := DumpRateFile(&b, p); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	for i, want := range map[int]string{
		0:  "client: 192.0.2.1",
		1:  "generation: 7",
		3:  "id name                                  quota       used",
		4:  "00 connections                              20          3",
		6:  "02 recipients                              100          4",
		10: "06 auth_rejects                              0          0",
	} {
		if lines[i] != want {
			t.Errorf("line %d: %q, want %q", i, lines[i], want)
		}
	}
	if !strings.HasPrefix(lines[2], "period start: ") || !strings.HasSuffix(lines[2], " (1795000000)") {
		t.Errorf("line 2: %q", lines[2])
	}
	os.WriteFile(p, []byte("smtp-gated-ratelimit 1\n"), 0o600)
	if err := DumpRateFile(&b, p); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("damaged file: %v", err)
	}
}
