package master

import (
	"testing"

	"smtp-gated/ipc"
)

// Spam is counted per message found, refused or passed (lock_on without
// spam), never more than the session's transactions.
func TestCountSpam(t *testing.T) {
	a := &admission{}
	for _, e := range []*ipc.SessionEnd{
		{ID: 1, By: "quit", Transacts: 2, Spam: 2}, // passed
		{ID: 2, By: "spam", Transacts: 1, Spam: 1}, // refused
		{ID: 3, By: "quit", Transacts: 1, Spam: 1000},
		{ID: 4, By: "quit", Transacts: 3, Spam: -5},
	} {
		a.countEnd(e)
	}
	if a.ops.spam != 4 {
		t.Errorf("spam counted %d, want 4", a.ops.spam)
	}
}
