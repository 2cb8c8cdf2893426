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
	fmt.Fprint(w, ipc.CtlUsageText(defaultSocket))
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
		return int(ipc.CtlUsage)
	}
	if *help {
		usage(stdout)
		return 0
	}
	if fs.NArg() == 0 {
		usage(stderr)
		return int(ipc.CtlUsage)
	}
	path := defaultSocket
	switch {
	case *sock != "":
		path = *sock
	case *cfgPath != "":
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "smtpgatectl: %v\n", err)
			return int(ipc.CtlFailed)
		}
		path, _ = cfg.ControlSocketPath()
	}
	r, err := ipc.Control(path, fs.Arg(0), fs.Args()[1:])
	if err != nil {
		fmt.Fprintf(stderr, "smtpgatectl: %v\n", err)
		return int(ipc.CtlNoDaemon)
	}
	out := stdout
	if r.Code != 0 {
		out = stderr
	}
	fmt.Fprint(out, r.Text)
	if len(r.Text) > 0 && r.Text[len(r.Text)-1] != '\n' {
		fmt.Fprintln(out)
	}
	return int(r.Code)
}
