package ipc

import (
	"fmt"
	"strings"
)

// CtlStatus is the outcome of a control command: the exit status of
// smtpgatectl, which the daemon's reply carries.
type CtlStatus int

const (
	CtlOK       CtlStatus = 0
	CtlFailed   CtlStatus = 1
	CtlUsage    CtlStatus = 2
	CtlNoDaemon CtlStatus = 3 // the daemon could not be reached, or was busy
	CtlDenied   CtlStatus = 4
	CtlNotFound CtlStatus = 5
)

var ctlStatusText = []struct {
	s    CtlStatus
	text string
}{
	{CtlOK, "done"},
	{CtlFailed, "failed"},
	{CtlUsage, "usage"},
	{CtlNoDaemon, "daemon not reachable or busy"},
	{CtlDenied, "permission denied"},
	{CtlNotFound, "no such session, lock or rate-limit record"},
}

// CtlCommand is one command of the control socket. The list below is
// the only description of the commands: smtpgatectl's usage text, the
// daemon's check of the caller's privileges and its usage replies all
// come from it, and a test holds smtpgatectl(8) to it.
type CtlCommand struct {
	Name  string
	Lockd bool // answered by lockd, through master
	Forms []CtlForm
}

// CtlForm is one way of calling a command.
type CtlForm struct {
	Args       string // what follows the name: literal words in lower case, placeholders in upper case
	Help       string
	Privileged bool // needs root or the user the daemon runs as
}

// CtlCommands lists the control commands.
var CtlCommands = []CtlCommand{
	{Name: "status", Forms: []CtlForm{{"", "print the daemon's status and its processes", false}}},
	{Name: "sessions", Forms: []CtlForm{{"", "print the live sessions, one line each", false}}},
	{Name: "stats", Forms: []CtlForm{
		{"", `print the counters, one "name: value" a line`, false},
		{"--prometheus", "the counters in Prometheus text format", false}}},
	{Name: "dump", Forms: []CtlForm{{"", "write the status file, as SIGUSR1, and print it", false}}},
	{Name: "show", Forms: []CtlForm{{"config", "print the running configuration", true}}},
	{Name: "reload", Forms: []CtlForm{{"", "reload the configuration, as SIGHUP", true}}},
	{Name: "stop", Forms: []CtlForm{{"", "stop accepting, let sessions finish, exit", true}}},
	{Name: "kill", Forms: []CtlForm{{"SESSION", "end the session with that id now", true}}},
	{Name: "log", Forms: []CtlForm{{"level LEVEL", "change log_level in every process", true}}},
	{Name: "locks", Lockd: true, Forms: []CtlForm{{"", "list the lock files", false}}},
	{Name: "lock", Lockd: true, Forms: []CtlForm{{"ADDR [DURATION] [CAUSE]", "lock a client", true}}},
	{Name: "unlock", Lockd: true, Forms: []CtlForm{{"ADDR", "remove a client's lock", true}}},
	{Name: "ratelimit", Lockd: true, Forms: []CtlForm{
		{"show ADDR", "print a client's rate-limit counts and quotas", false},
		{"set ADDR NAME=VALUE...", "give a client quotas of its own", true},
		{"reset ADDR [all]", "zero a client's counts; all: its quotas too", true}}},
}

// LookupCtl returns the command called name, or nil.
func LookupCtl(name string) *CtlCommand {
	for i := range CtlCommands {
		if CtlCommands[i].Name == name {
			return &CtlCommands[i]
		}
	}
	return nil
}

// Privileged reports whether a call of c with args needs root or the
// daemon's user: what the form whose first word args[0] is says, or,
// when no form starts with it, whether any form needs it.
func (c *CtlCommand) Privileged(args []string) bool {
	any := false
	for _, f := range c.Forms {
		first, _, _ := strings.Cut(f.Args, " ")
		if len(args) == 0 && f.Args == "" || len(args) > 0 && first == args[0] && first != strings.ToUpper(first) {
			return f.Privileged
		}
		any = any || f.Privileged
	}
	return any
}

// Usage is the usage line of c: its forms, separated by " | ".
func (c *CtlCommand) Usage() string {
	var u []string
	for _, f := range c.Forms {
		u = append(u, strings.TrimSpace(c.Name+" "+f.Args))
	}
	return "usage: " + strings.Join(u, " | ")
}

// CtlUsageText is the usage text of smtpgatectl: defaultSocket is the
// socket it uses when given none.
func CtlUsageText(defaultSocket string) string {
	var b strings.Builder
	b.WriteString("usage: smtpgatectl [-c config_file | -s socket] command [argument ...]\n\ncommands:\n")
	for _, c := range CtlCommands {
		for _, f := range c.Forms {
			call := strings.TrimSpace(c.Name + " " + f.Args)
			help := f.Help
			if f.Privileged {
				help += " (needs root)"
			}
			if len(call) > 20 {
				fmt.Fprintf(&b, "  %s\n  %-20s  %s\n", call, "", help)
			} else {
				fmt.Fprintf(&b, "  %-20s  %s\n", call, help)
			}
		}
	}
	b.WriteString("\n\"needs root\": root or the user the daemon runs as. The control socket is\n")
	b.WriteString("control_socket of the configuration file given with -c (when not set there,\n")
	fmt.Fprintf(&b, "control.sock beside its pidfile), or %s.\n", defaultSocket)
	line := "Exit status:"
	for i, s := range ctlStatusText {
		sep := ","
		if i == len(ctlStatusText)-1 {
			sep = "."
		}
		word := fmt.Sprintf("%d %s%s", s.s, s.text, sep)
		if len(line)+1+len(word) > 75 {
			b.WriteString(line + "\n")
			line = word
		} else {
			line += " " + word
		}
	}
	b.WriteString(line + "\n")
	return b.String()
}
