package ipc

import (
	"errors"
	"strings"
	"testing"
)

// LimitRecv: a packet up to the limit is read, a larger one is refused as
// truncated.
func TestLimitRecv(t *testing.T) {
	const limit = 16 << 10
	for _, tc := range []struct {
		text string
		ok   bool
	}{
		{"status", true},
		{strings.Repeat("x", limit-64), true},
		{strings.Repeat("x", limit), false},
		{strings.Repeat("x", 200<<10), false},
	} {
		a, b := connPair(t)
		b.LimitRecv(limit)
		if err := a.Send(MsgCtlRequest, 1, false, &CtlRequest{Version: Version, Command: tc.text}); err != nil {
			t.Fatal(err)
		}
		m, err := b.Recv()
		switch {
		case tc.ok && err != nil:
			t.Errorf("%d bytes: %v, want it read", len(tc.text), err)
		case !tc.ok && err == nil:
			m.Close()
			t.Errorf("%d bytes: read, want a truncation error", len(tc.text))
		case !tc.ok && (!errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "truncated")):
			t.Errorf("%d bytes: error %q, want ErrMalformed, truncated", len(tc.text), err)
		case tc.ok && m.Payload.(*CtlRequest).Command != tc.text:
			t.Errorf("%d bytes: command changed on the way", len(tc.text))
		}
	}
}
