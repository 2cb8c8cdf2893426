package logx

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Of 1000 lines of one kind and 3 of another, the first Max of each are
// written, then one summary line for the kind that was held back.
func TestRepeats(t *testing.T) {
	var b strings.Builder
	var mu sync.Mutex
	l := To(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return b.Write(p) }), Debug)
	var r Repeats
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 250; i++ {
				r.Logf(l, Notice, "pipeline full", "[1] pipeline full: NOOP %d refused", i)
			}
		}()
	}
	wg.Wait()
	for i := 0; i < 3; i++ {
		r.Logf(l, Warning, "other", "[1] other %d", i)
	}
	r.Logf(l, Debug+1, "silent", "not enabled")
	r.Summary(l, "[1] ")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != DefaultRepeats+3+1 {
		t.Fatalf("%d lines:\n%s", len(lines), b.String())
	}
	want := fmt.Sprintf("notice: [1] %d more %q lines not logged", 1000-DefaultRepeats, "pipeline full")
	if lines[len(lines)-1] != want {
		t.Errorf("last line %q, want %q", lines[len(lines)-1], want)
	}
	b.Reset()
	r.Summary(l, "")
	if b.Len() != 0 {
		t.Errorf("second summary wrote %q", b.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
