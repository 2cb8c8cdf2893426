package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	rc := run(args, &out, &errb)
	return rc, out.String(), errb.String()
}

func writeConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "smtp-gated.conf")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDumpReadsBack(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25\nmax_per_host 3\n")
	rc, out, errs := runCmd(t, "-t", p)
	if rc != 0 {
		t.Fatalf("-t: exit %d, %s", rc, errs)
	}
	if !strings.Contains(out, "max_per_host") || strings.Contains(out, "msg_hello") {
		t.Fatalf("-t output lacks max_per_host or has msg_* texts:\n%s", out)
	}
	// What -T prints is a configuration file that gives the same dump.
	rc, full, _ := runCmd(t, "-T", p)
	if rc != 0 || !strings.Contains(full, "msg_hello") {
		t.Fatalf("-T: exit %d, msg_hello missing", rc)
	}
	rc, again, errs := runCmd(t, "-T", writeConf(t, full))
	if rc != 0 || again != full {
		t.Fatalf("-T output does not read back the same (exit %d, %s)", rc, errs)
	}
}

func TestOneValue(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25\nmax_per_host 3\n")
	if rc, out, errs := runCmd(t, "-C", "max_per_host", p); rc != 0 || strings.TrimSpace(out) != "3" {
		t.Fatalf("-C max_per_host: exit %d, %q %s; want 3", rc, out, errs)
	}
	if rc, _, errs := runCmd(t, "-C", "no_such_option", p); rc == 0 || !strings.Contains(errs, "no_such_option") {
		t.Fatalf("-C of an unknown option: exit %d, %q; want an error naming it", rc, errs)
	}
}

func TestBadConfigNamesFileAndLine(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25\nport 99999\n")
	rc, _, errs := runCmd(t, p)
	if rc == 0 || !strings.Contains(errs, p+":3: port:") {
		t.Fatalf("exit %d, %q; want an error starting %s:3: port:", rc, errs, p)
	}
}

func TestNeedsConfig(t *testing.T) {
	if rc, _, errs := runCmd(t, "-f"); rc != 2 || !strings.Contains(errs, "configuration file is required") {
		t.Fatalf("exit %d, %q", rc, errs)
	}
	if rc, _, errs := runCmd(t, "-K", writeConf(t, "mode fixed\nfixed_server 192.0.2.25\npidfile /nonexistent/pid\n")); rc != 1 || !strings.Contains(errs, "not running") {
		t.Fatalf("-K without a daemon: exit %d, %q; want 1 and 'not running'", rc, errs)
	}
}

func TestVersionListsModes(t *testing.T) {
	rc, out, _ := runCmd(t, "-V")
	if rc != 0 || !strings.Contains(out, "USE_NAT:") || !strings.Contains(out, "fixed") {
		t.Fatalf("-V: exit %d, %q", rc, out)
	}
}
