package config

import (
	"strings"
	"testing"
)

// A value followed by blanks and other text is read as smtp-gated 1.4
// read it (sscanf "%i", inet_aton, an enumeration's first word), with a
// warning naming the file and line; text glued to a value stays an error.
func TestTrailingText(t *testing.T) {
	tests := []struct {
		line, name, want string
	}{
		{"timeout_idle 300  # five minutes", "timeout_idle", "300"},
		{"port 25 ; smtp", "port", "25"},
		{"buffer_size 0x800 bytes", "buffer_size", "2048"},
		{"priority -5 (nicer)", "priority", "-5"},
		{"limit_core_size 64 M # 64 MiB", "limit_core_size", "64M"},
		{"limit_fsize 0 # none", "limit_fsize", "0"},
		{"limit_fsize 10 mega", "limit_fsize", "10"},
		{"max_load 2.5 # load", "max_load", "2.5"},
		{"lock_perm 0640 # rw-r-----", "lock_perm", "0640"},
		{"fixed_server 10.0.0.1 # mta", "fixed_server", "10.0.0.1"},
		{"bind_address 127.1 lo", "bind_address", "127.0.0.1"},
		{"outgoing_addr ::1 # v6", "outgoing_addr", "::1"},
		{"log_level info # quieter", "log_level", "info"},
		{"log_level 6 info", "log_level", "info"},
		{"mode tproxy,netfilter # both", "mode", "tproxy,netfilter"},
		{"lock_on virus, spam # both", "lock_on", "virus,spam"},
		{"lock_on virus ,spam ;both", "lock_on", "virus,spam"},
		{"spool_leave_on never # keep nothing", "spool_leave_on", "never"},
	}
	for _, tt := range tests {
		c, err := parseString(base + tt.line + "\n")
		if err != nil {
			t.Errorf("%q: %v", tt.line, err)
			continue
		}
		if got, _ := c.Get(tt.name); got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.line, got, tt.want)
		}
		if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], "x.conf:2: "+tt.name+": ") ||
			!strings.Contains(c.Warnings[0], "ignored") {
			t.Errorf("%q: warnings %q, want one naming x.conf:2 and %s", tt.line, c.Warnings, tt.name)
		}
	}

	// Nothing to tell about a value with nothing after it, or a string.
	c, err := parseString(base + "timeout_idle 300\nproxy_name gate # x\nlimit_core_size 64 M\nlock_on virus , spam\n")
	if err != nil || len(c.Warnings) != 0 || c.ProxyName != "gate # x" {
		t.Errorf("plain values: %v, warnings %q, proxy_name %q", err, c.Warnings, c.ProxyName)
	}

	for _, tt := range []struct{ line, want string }{
		{"size_limit 10M", `x.conf:2: size_limit: "10M" is not a number`},
		{"port 25abc", `x.conf:2: port: "25abc" is not a number`},
		{"port 99999 # x", `x.conf:2: port: "99999" is out of range`},
		{"fixed_server 1.2.3.4foo", `x.conf:2: fixed_server: "1.2.3.4foo" is not an IP address`},
		{"log_level loud # x", `x.conf:2: log_level: unknown value "loud"`},
		{"log_helo yes # x", `x.conf:2: log_helo: "yes # x" is not a boolean`},
	} {
		if _, err := parseString(base + tt.line + "\n"); err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want %s...", tt.line, err, tt.want)
		}
	}
}

// The values with which smtp-gated 1.4 refused or cut every client are
// refused when the file is read, saying why.
func TestZeroThatRefusesEveryone(t *testing.T) {
	for _, tt := range []struct{ line, want string }{
		{"max_connections 0", "x.conf:3: max_connections: 0 would refuse every connection"},
		{"max_per_host 0", "x.conf:3: max_per_host: 0 would refuse every connection and lock its client"},
		{"timeout_idle 0", "x.conf:3: timeout_idle: 0 would close every session at once"},
	} {
		_, err := parseString(base + "# comment\n" + tt.line + "\n")
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want %s...", tt.line, err, tt.want)
		}
	}
}

func TestPipelineSizeRaised(t *testing.T) {
	for _, tt := range []struct {
		line string
		want uint64
		warn bool
	}{
		{"pipeline_size 0", 16, true},
		{"pipeline_size 15", 16, true},
		{"pipeline_size 16", 16, false},
		{"pipeline_size 200", 200, false},
	} {
		c, err := parseString(base + tt.line + "\n")
		if err != nil {
			t.Fatalf("%q: %v", tt.line, err)
		}
		if c.PipelineSize != tt.want || (len(c.Warnings) == 1) != tt.warn {
			t.Errorf("%q: got %d, warnings %q; want %d, warning %v", tt.line, c.PipelineSize, c.Warnings, tt.want, tt.warn)
		}
		if tt.warn && !strings.HasPrefix(c.Warnings[0], "x.conf:2: pipeline_size: ") {
			t.Errorf("%q: warning %q does not name the line", tt.line, c.Warnings[0])
		}
	}
}

func TestControlSocketPath(t *testing.T) {
	for _, tt := range []struct {
		conf, want string
		set        bool
	}{
		{"", "/var/run/smtp-gated/control.sock", false},
		{"pidfile /home/u/sg/sg.pid\n", "/home/u/sg/control.sock", false},
		{"pidfile /home/u/sg/sg.pid\ncontrol_socket /tmp/c.sock\n", "/tmp/c.sock", true},
		{"pidfile \"\"\n", "", false},
	} {
		c, err := parseString(base + tt.conf)
		if err != nil {
			t.Fatal(err)
		}
		if got, set := c.ControlSocketPath(); got != tt.want || set != tt.set {
			t.Errorf("%q: got %q, %v; want %q, %v", tt.conf, got, set, tt.want, tt.set)
		}
	}
}
