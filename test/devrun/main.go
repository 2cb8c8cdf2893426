// Command devrun is what `make run` runs: the daemon in the foreground with
// the local configuration, and what it needs to show itself working on a
// machine with nothing else installed.
//
// When nothing answers on the configured MTA address, it starts the test
// sink (test/sinkmta) on loopback and writes each message it accepts into
// DIR/mail/. When a clamd socket answers at one of the -clamd paths and the
// configuration scans with nothing, the daemon scans with it. Either way
// the configuration file is left alone: the daemon reads DIR/run.conf, the
// configuration with these few lines added at its end (the last setting of
// an option wins). Once the daemon is ready (sd_notify READY=1), devrun
// prints how to send a test message and an EICAR test, and where they go.
//
//	go run ./test/devrun -conf run/smtp-gated.conf -daemon bin/smtp-gated
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/test/sinkmta"
)

func main() {
	conf := flag.String("conf", "run/smtp-gated.conf", "the configuration to run")
	daemon := flag.String("daemon", "bin/smtp-gated", "the daemon's binary")
	clamd := flag.String("clamd", "/run/clamav/clamd.ctl /var/run/clamav/clamd.ctl", "clamd sockets to look for, separated by blanks")
	flag.Parse()
	os.Exit(run(*conf, *daemon, strings.Fields(*clamd)))
}

func run(conf, daemon string, clamdPaths []string) int {
	cfg, err := config.Load(conf)
	if err != nil {
		fmt.Fprintf(os.Stderr, "make run: %v\n", err)
		return 2
	}
	dir := filepath.Dir(conf)
	var extra []string
	where := ""

	mta := netip.AddrPortFrom(cfg.FixedServer, cfg.FixedServerPort).String()
	if cfg.Mode.Fixed() && !greets(mta) {
		mail := filepath.Join(dir, "mail")
		sink, err := startSink(mail)
		if err != nil {
			fmt.Fprintf(os.Stderr, "make run: no MTA answers on %s, and the bundled one did not start: %v\n", mta, err)
			return 1
		}
		defer sink.Close()
		ap, _ := netip.ParseAddrPort(sink.Addr())
		extra = append(extra, "fixed_server "+ap.Addr().String(), "fixed_server_port "+strconv.Itoa(int(ap.Port())))
		fmt.Printf("make run: no MTA answers on %s: the bundled test MTA listens on %s and writes each message to %s/\n", mta, sink.Addr(), mail)
		where = "each accepted message is written to " + mail + "/"
	} else if cfg.Mode.Fixed() {
		where = "messages go to the MTA on " + mta
	}

	if os.Geteuid() == 0 && cfg.SetUser == "" {
		extra = append(extra, "set_user nobody")
		fmt.Printf("make run: started as root: the children run as nobody (set_user)\n")
	}

	scans := cfg.AntivirusType != config.AntivirusOff
	if !scans {
		for _, p := range clamdPaths {
			if clamdAnswers(p) {
				extra = append(extra, "antivirus_type clamd", "antivirus_path "+p)
				fmt.Printf("make run: clamd answers on %s: messages are scanned with it\n", p)
				scans = true
				break
			}
		}
		if !scans {
			fmt.Printf("make run: no clamd at %s: messages are not scanned (Debian's clamav-daemon provides one)\n", strings.Join(clamdPaths, " or "))
		}
	}

	runConf := filepath.Join(dir, "run.conf")
	if err := writeRunConf(conf, runConf, extra); err != nil {
		fmt.Fprintf(os.Stderr, "make run: %v\n", err)
		return 1
	}
	code, err := runDaemon(daemon, runConf, dir, func() {
		addr := net.JoinHostPort(cfg.BindAddress.String(), strconv.Itoa(int(cfg.Port)))
		server := strings.Replace(addr, "0.0.0.0", "127.0.0.1", 1)
		fmt.Printf("\nsmtp-gated is ready on %s; %s.\n", addr, where)
		fmt.Printf("  a test message:  swaks --server %s --to you@example.org\n", server)
		fmt.Printf("  the EICAR test:  swaks --server %s --to you@example.org --body '%s'\n", server, eicar())
		if !scans {
			fmt.Printf("                   (not scanned: it is delivered like any other)\n")
		}
		fmt.Printf("  (swaks is in Debian's package swaks; stop the daemon with Ctrl-C)\n\n")
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "make run: %v\n", err)
		return 1
	}
	return code
}

// greets reports whether an SMTP server greets on addr.
func greets(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "220")
}

// clamdAnswers reports whether clamd answers PING on the unix socket path.
func clamdAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("zPING\x00")); err != nil {
		return false
	}
	b, err := bufio.NewReader(c).ReadString(0)
	return err == nil && strings.TrimRight(b, "\x00") == "PONG"
}

// startSink starts the test sink on loopback (port 2525 when it is free),
// writing each message it accepts into a file of dir.
func startSink(dir string) (*sinkmta.Sink, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s, err := sinkmta.Start("127.0.0.1:2525")
	if err != nil {
		if s, err = sinkmta.Start("127.0.0.1:0"); err != nil {
			return nil, err
		}
	}
	var n atomic.Int64
	s.OnMessage(func(m sinkmta.Message) {
		name := filepath.Join(dir, fmt.Sprintf("%d.%d.eml", time.Now().Unix(), n.Add(1)))
		head := fmt.Sprintf("Return-Path: <%s>\r\nDelivered-To: %s\r\n", m.From, strings.Join(m.To, ", "))
		if err := os.WriteFile(name, append([]byte(head), m.Body...), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "make run: test MTA: %v\n", err)
		}
	})
	return s, nil
}

// writeRunConf writes conf with the lines extra added at its end to path.
func writeRunConf(conf, path string, extra []string) error {
	b, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	out := fmt.Sprintf("# %s: written by make run from %s at each start; edit that file.\n", filepath.Base(path), filepath.Base(conf))
	out += string(b)
	if len(extra) > 0 {
		out += "\n# Added by make run for this start:\n" + strings.Join(extra, "\n") + "\n"
	}
	return os.WriteFile(path, []byte(out), 0o644)
}

// runDaemon runs the daemon in the foreground and calls ready once it
// said READY=1. Interrupts are the daemon's to handle: they reach it from
// the terminal, or from here when they were sent to devrun alone.
func runDaemon(daemon, conf, dir string, ready func()) (int, error) {
	sock := filepath.Join(dir, "notify.sock")
	os.Remove(sock)
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return 0, fmt.Errorf("notify socket: %w", err)
	}
	defer os.Remove(sock)
	defer nc.Close()
	os.Chmod(sock, 0o666) // children that changed user may notify too

	cmd := exec.Command(daemon, "-f", conf)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var once sync.Once
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				if l == "READY=1" {
					once.Do(ready)
				}
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			// From the terminal the daemon has it already; a second copy
			// of SIGINT or SIGTERM would change nothing.
			cmd.Process.Signal(sig)
		case err := <-exited:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode(), nil
			}
			return 0, err
		}
	}
}

// eicar returns the EICAR test string, put together here so that no file
// of the repository carries it whole.
func eicar() string {
	return `X5O!P%@AP[4\PZX54(P^)7CC)7}$` + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" + `!$H+H*`
}
