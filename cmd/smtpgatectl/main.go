// Command smtpgatectl controls a running smtp-gated through its control
// socket. See smtpgatectl(8).
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

const defaultSocket = "/var/run/smtp-gated/control.sock"

func usage(w io.Writer) {
	fmt.Fprintf(w, `usage: smtpgatectl [-c config_file | -s socket] command [argument ...]

commands:
  status                print the daemon's status and its processes
  sessions              print the live sessions, one line each
  stats                 print the counters, one "name: value" a line
  stats --prometheus    the counters in Prometheus text format
  dump                  write the status file (as SIGUSR1) and print it
  show config           print the running configuration (needs root)
  reload                reload the configuration (as SIGHUP; needs root)
  stop                  stop accepting, let sessions finish, exit (needs root)
  kill SESSION          end the session with that id now (needs root)
  log level LEVEL       change log_level in every process (needs root)
  locks                 list the lock files
  lock ADDR [DURATION] [CAUSE]
                        lock a client (needs root)
  unlock ADDR           remove a client's lock (needs root)
  ratelimit show ADDR   print a client's rate-limit counts and quotas
  ratelimit set ADDR NAME=VALUE...
                        give a client quotas of its own (needs root)
  ratelimit reset ADDR [all]
                        zero a client's counts; all: its quotas too (needs root)

"needs root": root or the user the daemon runs as. The control socket is
control_socket of the configuration file given with -c (when not set there,
control.sock beside its pidfile), or %s.
Exit status: 0 done, 1 failed, 2 usage, 3 daemon not reachable or busy,
4 permission denied, 5 no such session, lock or rate-limit record.
`, defaultSocket)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("smtpgatectl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfgPath := fs.String("c", "", "")
	sock := fs.String("s", "", "")
	help := fs.Bool("h", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "smtpgatectl: %v\n", err)
		usage(stderr)
		return 2
	}
	if *help {
		usage(stdout)
		return 0
	}
	if fs.NArg() == 0 {
		usage(stderr)
		return 2
	}
	path := defaultSocket
	switch {
	case *sock != "":
		path = *sock
	case *cfgPath != "":
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "smtpgatectl: %v\n", err)
			return 1
		}
		path, _ = cfg.ControlSocketPath()
	}
	r, err := ipc.Control(path, fs.Arg(0), fs.Args()[1:])
	if err != nil {
		fmt.Fprintf(stderr, "smtpgatectl: %v\n", err)
		return 3
	}
	out := stdout
	if r.Code != 0 {
		out = stderr
	}
	fmt.Fprint(out, r.Text)
	if len(r.Text) > 0 && r.Text[len(r.Text)-1] != '\n' {
		fmt.Fprintln(out)
	}
	return r.Code
}
