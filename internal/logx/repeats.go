package logx

import "sync"

// DefaultRepeats is how many lines of one kind a Repeats lets through.
const DefaultRepeats = 5

// Repeats limits the lines of one kind that one scope (a session) writes:
// a client that repeats a refused command a million times must not write
// a million lines. The first Max lines of each kind are written; the rest
// are counted, and Summary writes one line per kind for them at the end.
// A Repeats is safe for concurrent use; the zero value lets
// DefaultRepeats lines of each kind through.
type Repeats struct {
	Max int // lines of each kind written; 0 means DefaultRepeats

	mu    sync.Mutex
	kinds []*repeat
}

type repeat struct {
	kind    string
	level   int
	written int
	dropped uint64
}

// Logf writes a line of level and of the given kind through l, unless
// Max lines of that kind were written already.
func (r *Repeats) Logf(l *Logger, level int, kind, format string, a ...any) {
	if !l.Enabled(level) {
		return
	}
	if !r.allow(kind, level) {
		return
	}
	l.logf(level, format, a...)
}

// Eventf is Logf for an event line of 1.4's (Logger.Eventf).
func (r *Repeats) Eventf(l *Logger, level int, kind, format string, a ...any) {
	if !l.Enabled(level) || !r.allow(kind, level) {
		return
	}
	l.Eventf(level, format, a...)
}

func (r *Repeats) allow(kind string, level int) bool {
	max := r.Max
	if max <= 0 {
		max = DefaultRepeats
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var k *repeat
	for _, x := range r.kinds {
		if x.kind == kind {
			k = x
			break
		}
	}
	if k == nil {
		k = &repeat{kind: kind, level: level}
		r.kinds = append(r.kinds, k)
	}
	if k.written < max {
		k.written++
		return true
	}
	k.dropped++
	return false
}

// Summary writes, through l, one line per kind of which lines were held
// back: prefix, then "N more \"KIND\" lines not logged". The counts start
// again from zero.
func (r *Repeats) Summary(l *Logger, prefix string) {
	r.mu.Lock()
	kinds := r.kinds
	r.kinds = nil
	r.mu.Unlock()
	for _, k := range kinds {
		if k.dropped > 0 {
			l.logf(k.level, "%s%d more %q lines not logged", prefix, k.dropped, k.kind)
		}
	}
}
