package ipc

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestUnknownCauseAndState: a SessionEnd or SessionList with a value the
// catalogue does not list is malformed, whatever the sender.
func TestUnknownCauseAndState(t *testing.T) {
	for _, c := range CloseCauses() {
		if !c.Valid() {
			t.Errorf("%q not valid", c)
		}
	}
	for name, payload := range map[Type]any{
		MsgSessionEnd:  &SessionEnd{ID: 1, By: "client\nCLOSE by=forged"},
		MsgSessionList: &SessionList{Rows: []SessionRow{{ID: 1, State: "data\x1b[2J"}}},
		MsgVerdict:     &Verdict{Kind: "clean\n"},
	} {
		a, b := connPair(t)
		if err := a.Send(name, 1, false, payload); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Recv(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%v with an unknown value: %v, want ErrMalformed", name, err)
		}
		a.Close()
		b.Close()
	}
	a, b := connPair(t)
	defer a.Close()
	defer b.Close()
	for _, by := range CloseCauses() {
		if err := a.Send(MsgSessionEnd, 1, false, &SessionEnd{ID: 1, By: by}); err != nil {
			t.Fatal(err)
		}
		m, err := b.Recv()
		if err != nil || m.Payload.(*SessionEnd).By != by {
			t.Fatalf("%q: %v", by, err)
		}
	}
}

// sysBetween returns the words of the .Sy macros of the manual between
// the lines holding from and to.
func sysBetween(t *testing.T, from, to string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../man/smtp-gated.8")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, from)
	j := strings.Index(text[max(i, 0):], to)
	if i < 0 || j < 0 {
		t.Fatalf("smtp-gated.8: no %q ... %q", from, to)
	}
	words := map[string]bool{}
	for line := range strings.Lines(text[i : i+j]) {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == ".Sy" {
			words[strings.TrimPrefix(f[1], `\&`)] = true
		}
	}
	return words
}

// The manual lists exactly the causes and states of the catalogue.
func TestCausesAndStatesDocumented(t *testing.T) {
	causes := sysBetween(t, "says what ended the session:", "These are the only causes.")
	for c := range closeCauses {
		if !causes[string(c)] {
			t.Errorf("close cause %q not in smtp-gated(8)", c)
		}
		delete(causes, string(c))
	}
	for w := range causes {
		t.Errorf("smtp-gated(8) lists close cause %q, which the catalogue does not", w)
	}
	states := sysBetween(t, ".Sy state\n", "(its worker did not answer)")
	for s := range sessionStates {
		if !states[string(s)] {
			t.Errorf("state %q not in smtp-gated(8)", s)
		}
		delete(states, string(s))
	}
	delete(states, string(StateUnknown))
	delete(states, "state")
	for w := range states {
		t.Errorf("smtp-gated(8) lists state %q, which the catalogue does not", w)
	}
}
