package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// haproxy is a private HAProxy relaying in mode tcp to one backend: the
// plain relay the proxy is compared with. `make bench` installs Debian's
// package (as root, test/install-deps.sh haproxy); its service is never
// started, this one runs in the foreground with a configuration of its
// own and is killed by the benchmark's cleanup.
type haproxy struct {
	addr string
	cmd  *exec.Cmd
}

// startHAProxy starts HAProxy on a free loopback port in front of
// backend, or returns nil when haproxy is not installed.
func startHAProxy(b *testing.B, backend string) *haproxy {
	b.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/haproxy"); err != nil {
			b.Log("haproxy not installed (make bench installs it as root): no HAProxy column")
			return nil
		}
	}
	dir := b.TempDir()
	port := harness.FreePort(b)
	cfg := fmt.Sprintf(`global
	maxconn 8000

defaults
	mode tcp
	timeout connect 10s
	timeout client 300s
	timeout server 300s

listen smtp
	bind 127.0.0.1:%d
	server sink %s
`, port, backend)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	output := func() string { s, _ := os.ReadFile(logf.Name()); return string(s) }
	cmd := exec.Command(bin, "-db", "-f", path) // -db: foreground, no daemon
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatalf("start haproxy: %v", err)
	}
	h := &haproxy{addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", h.addr); err == nil {
			c.Close()
			return h
		}
		select {
		case <-exited:
			b.Fatalf("haproxy exited: %s", output())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("haproxy does not listen on %s: %s", h.addr, output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pid is HAProxy's process id.
func (h *haproxy) pid() int { return h.cmd.Process.Pid }
