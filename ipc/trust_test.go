package ipc

import (
	"errors"
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
