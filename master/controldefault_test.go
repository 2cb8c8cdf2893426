package master

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
)

// Without control_socket the socket is control.sock beside the pidfile;
// when it cannot be made there the daemon goes on without one, with a
// warning. A control_socket that is set and cannot be made stops the
// start.
func TestControlSocketDefault(t *testing.T) {
	dir := t.TempDir()
	parse := func(text string) *config.Config {
		t.Helper()
		cfg, err := config.Parse(strings.NewReader("mode getsockname\n"+text), "test")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	var log bytes.Buffer
	m := &master{log: logx.To(&log, logx.Debug)}
	if err := m.openControlDefault(parse("pidfile " + dir + "/sg.pid\n")); err != nil {
		t.Fatalf("beside the pidfile: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "control.sock")); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("no socket %s/control.sock: %v", dir, err)
	}
	m.closeControl()

	// A directory whose control.sock is longer than a unix socket's
	// name may be: the pidfile fits, the socket does not.
	long := filepath.Join(dir, strings.Repeat("d", 100-len(dir)))
	if err := os.Mkdir(long, 0o755); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	m = &master{log: logx.To(&log, logx.Debug)}
	if err := m.openControlDefault(parse("pidfile " + long + "/p\n")); err != nil {
		t.Fatalf("default socket that cannot be made: %v, want a warning only", err)
	}
	if m.ctl != nil || !strings.Contains(log.String(), "running without a control socket") {
		t.Errorf("listener %v, log %q; want none and a warning", m.ctl, log.String())
	}
	m = &master{log: logx.To(&log, logx.Debug)}
	if err := m.openControlDefault(parse("control_socket " + long + "/control.sock\n")); err == nil {
		m.closeControl()
		t.Errorf("control_socket set and not made: no error")
	}
}
