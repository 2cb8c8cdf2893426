package scanner

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

// fakeMksd speaks mksd's protocol: one line "S<path>\n", one answer line.
// It reads the named file as mksd would and answers VIR for EICAR, OK
// otherwise, or answer when it is set.
type fakeMksd struct {
	mu     sync.Mutex
	paths  []string
	files  [][]byte
	modes  []os.FileMode
	answer string
}

func (m *fakeMksd) serve(c net.Conn) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	path := strings.TrimSuffix(strings.TrimPrefix(line, "S"), "\n")
	b, rerr := os.ReadFile(path)
	fi, serr := os.Stat(path)
	m.mu.Lock()
	m.paths = append(m.paths, path)
	m.files = append(m.files, b)
	if serr == nil {
		m.modes = append(m.modes, fi.Mode().Perm())
	}
	answer := m.answer
	m.mu.Unlock()
	switch {
	case answer != "":
		io.WriteString(c, answer)
	case !strings.HasPrefix(line, "S/") || rerr != nil:
		io.WriteString(c, "ERR cannot read "+path+"\n")
	case bytes.Contains(b, harness.EICAR()):
		io.WriteString(c, "VIR EICAR_Test_File "+path+"\n")
	default:
		io.WriteString(c, "OK "+path+"\n")
	}
}

func mksdConfig(path string) *config.Config {
	cfg := testConfig()
	cfg.AntivirusType = config.AntivirusMksd
	cfg.AntivirusPath = path
	return cfg
}

// mksd is told the path of a copy the scanner process made of the whole
// spool file; the copy is gone after the answer.
func TestMksd(t *testing.T) {
	m := &fakeMksd{}
	e, lb := testEngine(t, mksdConfig(fakeServer(t, m.serve)))
	tok := harness.Token(t)
	virus := append(message(tok), harness.EICAR()...)

	f := privateSpool(t, virus)
	v := scanWith(t, e, lb, f)
	if v.Kind != ipc.VerdictVirus || v.Name != "EICAR_Test_File" || v.Scanned[0] != "mksd" {
		t.Fatalf("verdict %+v, want virus EICAR_Test_File by mksd\n%s", v, lb)
	}
	whole, _ := os.ReadFile(f.Name())
	if !bytes.Equal(m.files[0], whole) {
		t.Errorf("mksd read %d bytes, want the %d of the spool file", len(m.files[0]), len(whole))
	}
	if m.modes[0] != 0o660 {
		t.Errorf("the copy had mode %o, want spool_perm 0660", m.modes[0])
	}
	dir, _ := e.tempDir()
	if filepath.Dir(m.paths[0]) != dir {
		t.Errorf("mksd was told %q, want a file in %q", m.paths[0], dir)
	}
	if _, err := os.Stat(m.paths[0]); !os.IsNotExist(err) {
		t.Errorf("the copy %s is still there after the scan (%v)", m.paths[0], err)
	}

	if v := scanWith(t, e, lb, privateSpool(t, message(tok))); v.Kind != ipc.VerdictClean || v.Err != "" {
		t.Errorf("clean: verdict %+v", v)
	}
	for _, tc := range []struct {
		answer    string
		kind      ipc.VerdictKind
		name, err string
	}{
		{"CLN\n", ipc.VerdictClean, "", ""},
		{"DEL /x\n", ipc.VerdictClean, "", ""},
		{"VIR\n", ipc.VerdictVirus, e.cfg.MsgUnknownVirus, ""},
		{"ERR no licence\n", ipc.VerdictError, "", "no licence"},
		{"HELLO\n", ipc.VerdictError, "", "unexpected answer"},
		{"\x00\x01\n", ipc.VerdictError, "", "unreadable answer"},
	} {
		m.mu.Lock()
		m.answer = tc.answer
		m.mu.Unlock()
		v := scanWith(t, e, lb, privateSpool(t, message(tok)))
		if v.Kind != tc.kind || v.Name != tc.name || !strings.Contains(v.Err, tc.err) {
			t.Errorf("answer %q: verdict %+v, want %s %q with %q", tc.answer, v, tc.kind, tc.name, tc.err)
		}
	}
	// A mksd that hangs up.
	e2, lb2 := testEngine(t, mksdConfig(fakeServer(t, func(c net.Conn) { bufio.NewReader(c).ReadString('\n') })))
	if v := scanWith(t, e2, lb2, privateSpool(t, message(tok))); v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "closed without an answer") {
		t.Errorf("hang-up: verdict %+v, want an error", v)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("%d files left in the private directory", len(ents))
	}
}

func TestMksdTimeout(t *testing.T) {
	path := fakeServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	cfg := mksdConfig(path)
	cfg.TimeoutScanner = 1
	e, lb := testEngine(t, cfg)
	t0 := time.Now()
	v := scanWith(t, e, lb, privateSpool(t, message("x")))
	if d := time.Since(t0); v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "no answer within 1s") || d < 900*time.Millisecond || d > 3*time.Second {
		t.Errorf("verdict %+v after %v, want a timeout after 1s", v, d)
	}
}

// mksd only listens on a unix socket.
func TestMksdNeedsSocketPath(t *testing.T) {
	e, lb := testEngine(t, mksdConfig("127.0.0.1:1"))
	if v := scanWith(t, e, lb, privateSpool(t, message("x"))); v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "unix socket") {
		t.Errorf("verdict %+v, want an error about the socket path", v)
	}
}

// The scanner process's private directory: made on first use, mode 0711,
// removed at exit.
func TestTempDir(t *testing.T) {
	s := &server{}
	dir, err := s.tempDir()
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o711 || !fi.IsDir() {
		t.Fatalf("%s: %v %v, want a directory of mode 0711", dir, fi.Mode(), err)
	}
	if again, _ := s.tempDir(); again != dir {
		t.Errorf("second call made %s, want %s again", again, dir)
	}
	os.Remove(dir) // tmp cleaners: made again
	if again, _ := s.tempDir(); again == dir || again == "" {
		t.Errorf("after removal: %q", again)
	}
	s.removeTemp()
	if _, err := os.Stat(s.tmp); s.tmp != "" || err == nil {
		t.Errorf("removeTemp left %q", s.tmp)
	}
}
