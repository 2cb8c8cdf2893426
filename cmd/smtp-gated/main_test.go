package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"smtp-gated/internal/config"
	"smtp-gated/internal/version"
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

// -C prints "%-30s value", as 1.4 did; an unknown option exits 255.
func TestOneValue(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25\nmax_per_host 3\n")
	if rc, out, errs := runCmd(t, "-C", "max_per_host", p); rc != 0 || out != "max_per_host                   3\n" {
		t.Fatalf("-C max_per_host: exit %d, %q %s; want max_per_host padded to 30, then 3", rc, out, errs)
	}
	if rc, out, _ := runCmd(t, p, "-C", "msg_hello"); rc != 0 || out != fmt.Sprintf("%-30s SMTP Proxy, hello\n", "msg_hello") {
		t.Fatalf("-C msg_hello after the file: exit %d, %q", rc, out)
	}
	if rc, _, errs := runCmd(t, "-C", "no_such_option", p); rc != 255 || !strings.Contains(errs, "no_such_option") {
		t.Fatalf("-C of an unknown option: exit %d, %q; want 255 and an error naming it", rc, errs)
	}
}

// A configuration error exits 2, naming the file and line.
func TestBadConfigNamesFileAndLine(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25\nport 99999\n")
	for _, args := range [][]string{{p}, {"-t", p}, {"-C", "port", p}, {"-K", p}} {
		rc, _, errs := runCmd(t, args...)
		if rc != 2 || !strings.Contains(errs, p+":3: port:") {
			t.Fatalf("%v: exit %d, %q; want 2 and an error starting %s:3: port:", args, rc, errs, p)
		}
	}
}

// Trailing text after a value is read as 1.4 read it, with a warning
// naming the file and line.
func TestTrailingTextWarns(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25 # mta\ntimeout_idle 300  # five minutes\n")
	rc, out, errs := runCmd(t, "-t", p)
	if rc != 0 || !strings.Contains(out, "timeout_idle 300\n") || !strings.Contains(out, "fixed_server 192.0.2.25\n") {
		t.Fatalf("-t: exit %d, %s", rc, errs)
	}
	for _, want := range []string{p + ":2: fixed_server: ", p + ":3: timeout_idle: "} {
		if !strings.Contains(errs, "smtp-gated: warning: "+want) {
			t.Errorf("no warning %q in %q", want, errs)
		}
	}
}

// 1.4's exit statuses for the command line.
func TestExitStatus(t *testing.T) {
	p := writeConf(t, "mode fixed\nfixed_server 192.0.2.25\n")
	for _, tt := range []struct {
		args []string
		rc   int
	}{
		{[]string{"-h"}, 10},
		{[]string{"--help"}, 10},
		{[]string{"-v"}, 0},
		{[]string{"-V"}, 0},
		{[]string{"-t", p}, 0},
		{[]string{"-t", "-v"}, 3},
		{[]string{"-K", "-r", p}, 3},
		{[]string{"-x", p}, 1},
		{[]string{p, p}, 1},
		{[]string{"-C"}, 1},
		{[]string{"-L"}, 1},
		{[]string{"-D"}, 1},
		{[]string{"-D", "x", p}, 1},
		{[]string{"-f"}, 1},
		{[]string{"-t", filepath.Join(t.TempDir(), "none.conf")}, 2},
		{[]string{"-L", filepath.Join(t.TempDir(), "none")}, 1},
		{[]string{"-D", "0x4", "-S", p}, 0},
	} {
		if rc, _, errs := runCmd(t, tt.args...); rc != tt.rc {
			t.Errorf("%v: exit %d, want %d (%s)", tt.args, rc, tt.rc, errs)
		}
	}
	if _, _, errs := runCmd(t, "-D", "6", "-S", p); !strings.HasPrefix(errs, "Foreground level: 0x06\n") {
		t.Errorf("-D 6: stderr %q, want Foreground level: 0x06 first", errs)
	}
	if _, _, errs := runCmd(t, "-f", "-S", p); errs != "" {
		t.Errorf("-f: stderr %q, want nothing", errs)
	}
}

func TestNeedsConfig(t *testing.T) {
	if rc, _, errs := runCmd(t, "-f"); rc != 1 || !strings.Contains(errs, "configuration file is required") {
		t.Fatalf("exit %d, %q", rc, errs)
	}
	if rc, _, errs := runCmd(t, "-K", writeConf(t, "mode fixed\nfixed_server 192.0.2.25\npidfile /nonexistent/pid\n")); rc != 1 || !strings.Contains(errs, "not running") {
		t.Fatalf("-K without a daemon: exit %d, %q; want 1 and 'not running'", rc, errs)
	}
}

// -V prints 1.4's layout: the version block, then Defines: with this
// build's features under 1.4's names, then Extra:.
func TestVersionLayout(t *testing.T) {
	rc, out, _ := runCmd(t, "-V")
	if rc != 0 {
		t.Fatalf("-V: exit %d", rc)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if lines[0] != "SMTP Transparent AV proxy" || lines[1] != fmt.Sprintf("  %-30s: %s", "version", version.Version) ||
		!strings.HasPrefix(lines[2], "  helper protocol version       : 0x402") ||
		!strings.HasPrefix(lines[3], "  compile date                  : ") || lines[4] != "Defines:" {
		t.Fatalf("-V starts\n%s", strings.Join(lines[:min(5, len(lines))], "\n"))
	}
	var nat []string
	for _, m := range version.Modes() {
		switch m {
		case config.ModeNetfilter, config.ModeTproxy, config.ModeIpfw, config.ModeIpfilter, config.ModePf:
			nat = append(nat, m.String())
		}
	}
	wantNat := "no"
	if len(nat) > 0 {
		wantNat = "yes (" + strings.Join(nat, " ") + ")"
	}
	i := 5
	for _, name := range []string{"USE_NAT", "USE_SHARED_MEM", "USE_SPF", "USE_REGEX", "SCANNER_MKSD", "SCANNER_LIBDSPAM",
		"FILTER_CHUNKING", "SILENT_ECONNRESET", "CONN_REJ_CODE", "HELO_LENGTH", "IDENT_SIZE", "PIPELINE_SIZE_MIN",
		"SLOT_HASH_THRESHOLD", "HAVE_MMAP"} {
		k, v, ok := strings.Cut(lines[i], ": ")
		if !ok || k != fmt.Sprintf("  %-30s", name) || v == "" {
			t.Errorf("line %d: %q, want %s", i, lines[i], name)
		}
		switch name {
		case "USE_NAT":
			if v != wantNat {
				t.Errorf("USE_NAT %q, want %q", v, wantNat)
			}
		case "SCANNER_LIBDSPAM":
			if v != "no" {
				t.Errorf("SCANNER_LIBDSPAM %q: this build has no libdspam", v)
			}
		case "PIPELINE_SIZE_MIN":
			if v != "16" {
				t.Errorf("PIPELINE_SIZE_MIN %q", v)
			}
		}
		i++
	}
	if lines[i] != "Extra:" {
		t.Errorf("after Defines: %q, want Extra:", lines[i])
	}
	rc, short, _ := runCmd(t, "-v")
	if rc != 0 || short != strings.Join(lines[:4], "\n")+"\n" {
		t.Errorf("-v: exit %d, %q; want the version block", rc, short)
	}
}
