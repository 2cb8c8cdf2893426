package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"smtp-gated/ipc"
)

// literal is the words of a command call up to its first placeholder:
// "ratelimit set" for "ratelimit set ADDR NAME=VALUE...".
func literal(call string) string {
	var w []string
	for _, f := range strings.Fields(call) {
		if f != strings.ToLower(f) || strings.HasPrefix(f, "[") {
			break
		}
		w = append(w, f)
	}
	return strings.Join(w, " ")
}

// smtpgatectl(8) describes each form of each command, marked Privileged
// exactly when the daemon requires privileges for it, and nothing else.
func TestManualListsCommands(t *testing.T) {
	text, err := os.ReadFile("../../man/smtpgatectl.8")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(text), "\n")
	manual := map[string]bool{} // literal words → Privileged
	for i, l := range lines {
		rest, ok := strings.CutPrefix(l, ".It Cm ")
		if !ok {
			continue
		}
		var words []string
		for _, f := range strings.Fields(rest) {
			if f == "Ar" || f == "Op" {
				break
			}
			words = append(words, f)
		}
		manual[strings.Join(words, " ")] = i+1 < len(lines) && strings.HasPrefix(lines[i+1], ".Sy Privileged")
	}
	forms := 0
	for _, c := range ipc.CtlCommands {
		for _, f := range c.Forms {
			forms++
			key := literal(c.Name + " " + f.Args)
			priv, ok := manual[key]
			switch {
			case !ok:
				t.Errorf("smtpgatectl(8) does not describe %q", key)
			case priv != f.Privileged:
				t.Errorf("smtpgatectl(8): %q Privileged %v, the daemon %v", key, priv, f.Privileged)
			}
			delete(manual, key)
		}
	}
	for key := range manual {
		t.Errorf("smtpgatectl(8) describes %q, which is no command", key)
	}
	if forms < 15 {
		t.Errorf("%d forms of commands, want every one", forms)
	}
}

// The usage text names every form of every command, and the exit
// statuses.
func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"-h"}, &out, &errOut); code != 0 {
		t.Fatalf("-h: exit %d", code)
	}
	u := out.String()
	for _, c := range ipc.CtlCommands {
		for _, f := range c.Forms {
			if call := strings.TrimSpace(c.Name + " " + f.Args); !strings.Contains(u, "\n  "+call) {
				t.Errorf("usage lacks %q:\n%s", call, u)
			}
		}
	}
	for _, want := range []string{"3 daemon not reachable or busy", "5 no such session"} {
		if !strings.Contains(u, want) {
			t.Errorf("usage lacks %q:\n%s", want, u)
		}
	}
	if code := run(nil, &out, &errOut); code != int(ipc.CtlUsage) {
		t.Errorf("no command: exit %d, want %d", code, ipc.CtlUsage)
	}
}
