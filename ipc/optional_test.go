package ipc

import "testing"

// A reply whose descriptor is optional travels with it or without it,
// never with another number.
func TestOptionalFDs(t *testing.T) {
	a, b := connPair(t)
	f := devNulls(t, 2)
	defer f[0].Close()
	defer f[1].Close()
	for _, n := range []int{0, 1} {
		var fds []int
		for i := range n {
			fds = append(fds, fdOf(t, f[i]))
		}
		if err := a.Send(MsgSpoofSocket, 9, true, &SpoofSocket{}, fds...); err != nil {
			t.Fatalf("%d descriptors: %v", n, err)
		}
		m, err := b.Recv()
		if err != nil {
			t.Fatalf("%d descriptors: %v", n, err)
		}
		if len(m.Files) != n {
			t.Errorf("got %d descriptors, sent %d", len(m.Files), n)
		}
		m.Close()
	}
	if err := a.Send(MsgSpoofSocket, 9, true, &SpoofSocket{}, fdOf(t, f[0]), fdOf(t, f[1])); err == nil {
		t.Error("two descriptors: no error")
	}
	// Other types keep their exact count.
	if err := a.Send(MsgNewSession, 9, false, &NewSession{}); err == nil {
		t.Error("NEW_SESSION without its descriptor: no error")
	}
}
