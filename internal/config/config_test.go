package config

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// base makes a file valid on its own (a mode is required).
const base = "mode getsockname\n"

func parseString(s string) (*Config, error) {
	return Parse(strings.NewReader(s), "x.conf")
}

// roundTrip writes c with messages and parses it back without the checks
// across options (Default has no mode).
func roundTrip(t *testing.T, c *Config) *Config {
	t.Helper()
	var b bytes.Buffer
	if err := c.Write(&b, true); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got, _, err := parse(&b, "written")
	if err != nil {
		t.Fatalf("parse of Write output: %v\n%s", err, b.String())
	}
	return got
}

func TestDefaultRoundTrip(t *testing.T) {
	if got := roundTrip(t, Default()); !reflect.DeepEqual(got, Default()) {
		t.Errorf("round trip of Default() differs:\ngot  %+v\nwant %+v", got, Default())
	}
}

func TestDefaultNeedsMode(t *testing.T) {
	var b bytes.Buffer
	if err := Default().Write(&b, true); err != nil {
		t.Fatal(err)
	}
	_, err := Parse(&b, "d.conf")
	if err == nil || !strings.HasPrefix(err.Error(), `d.conf:`) || !strings.Contains(err.Error(), `mode: "none" is not a mode; accepted: fixed, fixed+xclient,`) {
		t.Errorf("got %v, want the mode error", err)
	}
	_, err = parseString("# nothing\n")
	if want := "x.conf: mode: not set; accepted: fixed, fixed+xclient, remote, remote-udp, getsockname, netfilter, tproxy, tproxy,netfilter, ipfw, ipfilter, pf"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// changed gives every option a value other than its default, as written
// in a file, and as Get then prints it.
var changed = map[string][2]string{
	"proxy_name":                 {"gate.example.org", "gate.example.org"},
	"bind_address":               {"127.0.0.1", "127.0.0.1"},
	"port":                       {"0x19", "25"},
	"outgoing_addr":              {"2001:db8::1", "2001:db8::1"},
	"pidfile":                    {"/run/sg.pid", "/run/sg.pid"},
	"chroot_path":                {"/var/empty", "/var/empty"},
	"set_user":                   {"smtpgw", "smtpgw"},
	"set_group":                  {"mail", "mail"},
	"priority":                   {"-5", "-5"},
	"connect_queue":              {"32", "32"},
	"enfile_sleep":               {"1", "1"},
	"on_takeover_cmds":           {"3", "3"},
	"buffer_size":                {"4096", "4096"},
	"pipeline_size":              {"64", "64"},
	"pid_hash_size":              {"010", "8"},
	"host_hash_size":             {"100", "100"},
	"session_workers":            {"4", "4"},
	"control_socket":             {"/run/sg.sock", "/run/sg.sock"},
	"limit_core_size":            {"-1", "-1"},
	"limit_virt_size":            {"1 G", "1G"},
	"limit_data_size":            {"512k", "512K"},
	"limit_fsize":                {"1000", "1000"},
	"mode":                       {"fixed+xclient", "fixed+xclient"},
	"fixed_server":               {"192.0.2.25", "192.0.2.25"},
	"fixed_server_port":          {"587", "587"},
	"remote_port":                {"1114", "1114"},
	"remote_udp_retries":         {"5", "5"},
	"remote_udp_secret":          {"0xdeadbeef", "3735928559"},
	"statefile":                  {"/run/sg.state", "/run/sg.state"},
	"statefile_perm":             {"0600", "0600"},
	"statefile_type":             {"flat", "flat"},
	"lock_on":                    {"spam, virus ,earlytalk", "virus,spam,earlytalker"},
	"lock_duration":              {"-1", "-1"},
	"lock_path":                  {"/l", "/l"},
	"lock_perm":                  {"640", "0640"},
	"action_script":              {"/usr/local/bin/act", "/usr/local/bin/act"},
	"spool_path":                 {"/s", "/s"},
	"spool_perm":                 {"0600", "0600"},
	"spool_leave_on":             {"virus,spam", "spam,virus"},
	"timeout_direct":             {"1", "1"},
	"timeout_lookup":             {"2", "2"},
	"timeout_scanner":            {"3", "3"},
	"timeout_spam":               {"4", "4"},
	"timeout_session":            {"5", "5"},
	"timeout_idle":               {"6", "6"},
	"timeout_connect":            {"7", "7"},
	"timeout_shutdown":           {"8", "8"},
	"auth_require":               {"IfSupported", "ifsupported"},
	"auth_skip":                  {"antivir,antispam", "antivir,antispam"},
	"max_connections":            {"1000", "1000"},
	"max_per_host":               {"2", "2"},
	"max_per_ident":              {"1", "1"},
	"max_load":                   {"3.5", "3.5"},
	"size_limit":                 {"10000000", "10000000"},
	"scan_max_size":              {"0", "0"},
	"spam_max_size":              {"1000000", "1000000"},
	"spam_max_load":              {"0", "0"},
	"spam_threshold":             {"5.25", "5.25"},
	"ignore_errors":              {"yes", "yes"},
	"scan_stream":                {"on", "yes"},
	"log_helo":                   {"ON", "yes"},
	"log_mail_from":              {"accepted,base64", "accepted,base64"},
	"log_rcpt_to":                {"rejected", "rejected"},
	"email_length":               {"128", "128"},
	"log_level":                  {"4", "warning"},
	"log_facility":               {"local3", "local3"},
	"nat_header":                 {"X-Proxied", "X-Proxied"},
	"nat_header_type":            {"ip-only", "ip-only"},
	"spool_header":               {"X-Spool", "X-Spool"},
	"abuse":                      {"abuse@example.org", "abuse@example.org"},
	"antivirus_type":             {"clamd", "clamd"},
	"antivirus_path":             {"127.0.0.1:3310", "127.0.0.1:3310"},
	"antispam_type":              {"spamassassin", "spamassassin"},
	"antispam_path":              {"127.0.0.1:783", "127.0.0.1:783"},
	"dspam_storage":              {"/d", "/d"},
	"dnsbl":                      {"zen.example.org,bl.example.net", "zen.example.org,bl.example.net"},
	"dns_server":                 {"192.0.2.53,[2001:db8::53]:5353", "192.0.2.53,[2001:db8::53]:5353"},
	"spf":                        {"fixed", "fixed"},
	"spf_log_only":               {"true", "yes"},
	"spf_fixed_ip":               {"198.51.100.7", "198.51.100.7"},
	"regex_enforce_helo":         {`^[a-z0-9.-]+$`, `^[a-z0-9.-]+$`},
	"regex_reject_helo":          {`"(?i)^localhost$"`, `(?i)^localhost$`},
	"regex_enforce_mail_from":    {`@example\.org>$`, `@example\.org>$`},
	"regex_reject_mail_from":     {`^<>$`, `^<>$`},
	"regex_enforce_rcpt_to":      {`.`, `.`},
	"regex_reject_rcpt_to":       {`"a b"`, `a b`},
	"earlytalker":                {"off", "no"},
	"ratelimit_path":             {"/r", "/r"},
	"ratelimit_period":           {"3600", "3600"},
	"ratelimit_dst_expiration":   {"60", "60"},
	"ratelimit_generation":       {"20240101000000", "20240101000000"},
	"ratelimit_connections":      {"100", "100"},
	"ratelimit_sessions":         {"50", "50"},
	"ratelimit_recipients":       {"500", "500"},
	"ratelimit_bytes":            {"100000000", "100000000"},
	"ratelimit_mailfrom_rejects": {"10", "10"},
	"ratelimit_rcptto_rejects":   {"20", "20"},
	"ratelimit_auth_rejects":     {"30", "30"},
	"forbid_starttls":            {"1", "yes"},
	"locale":                     {"pl_PL.UTF-8", "pl_PL.UTF-8"},
}

func changedFile() string {
	var b strings.Builder
	for _, n := range Names() {
		v, ok := changed[n]
		if !ok && strings.HasPrefix(n, "msg_") {
			v = [2]string{`"changed text of ` + n + `; # with quotes" inside"`, ""}
		}
		b.WriteString(n + "\t " + v[0] + " \t\r\n")
	}
	return b.String()
}

func TestEveryOptionChanged(t *testing.T) {
	c, err := parseString(changedFile())
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	for _, n := range Names() {
		got, err := c.Get(n)
		if err != nil {
			t.Fatal(err)
		}
		def, _ := d.Get(n)
		if got == def {
			t.Errorf("%s: got the default %q, want a changed value", n, got)
		}
		want, ok := changed[n]
		if !ok && strings.HasPrefix(n, "msg_") {
			want[1] = `changed text of ` + n + `; # with quotes" inside`
		} else if !ok {
			t.Errorf("%s: missing from the table of changed values", n)
		}
		if got != want[1] {
			t.Errorf("%s: got %q, want %q", n, got, want[1])
		}
	}
	if got := roundTrip(t, c); !reflect.DeepEqual(got, c) {
		t.Errorf("round trip differs:\ngot  %+v\nwant %+v", got, c)
	}
	if c.RegexRejectHeloRE == nil || !c.RegexRejectHeloRE.MatchString("LocalHost") {
		t.Errorf("RegexRejectHeloRE: got %v, want a case-insensitive localhost", c.RegexRejectHeloRE)
	}
	if c.RegexRejectRcptToRE.String() != "a b" {
		t.Errorf("RegexRejectRcptToRE: got %v, want a b", c.RegexRejectRcptToRE)
	}
	if len(changed) != len(Names())-countPrefix(Names(), "msg_") {
		t.Errorf("table of changed values has %d entries, want %d", len(changed), len(Names())-countPrefix(Names(), "msg_"))
	}
}

func countPrefix(names []string, p string) int {
	n := 0
	for _, s := range names {
		if strings.HasPrefix(s, p) {
			n++
		}
	}
	return n
}

// Every exported field is one option, named after it.
func TestFieldsAreOptions(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range sections {
		for _, op := range s.opts {
			f := reflect.TypeFor[Config]().FieldByIndex(op.index)
			seen[f.Name] = true
			if op.re != nil {
				seen[reflect.TypeFor[Config]().FieldByIndex(op.re).Name] = true
			}
		}
	}
	ct := reflect.TypeFor[Config]()
	seen["Warnings"] = true // no option: what Parse has to tell
	for i := range ct.NumField() {
		if f := ct.Field(i); !seen[f.Name] {
			t.Errorf("field %s is no option", f.Name)
		}
	}
	names := Names()
	if len(names) != len(seen)-7 {
		t.Errorf("got %d names, want %d", len(names), len(seen)-7)
	}
	for _, n := range []string{"session_workers", "control_socket", "timeout_shutdown", "ratelimit_period", "ratelimit_sessions", "earlytalker", "msg_regex_rcpt_to"} {
		if !slices.Contains(names, n) {
			t.Errorf("Names() lacks %s", n)
		}
	}
	for _, n := range []string{"ratelimit_expiration", "ratelimit_messages", "earlytalk", "source_addr", "scanner_path"} {
		if slices.Contains(names, n) {
			t.Errorf("Names() has alias %s", n)
		}
	}
}

// value runs one option line through Parse and returns Get's answer or
// the error.
func value(line string) (string, error) {
	c, err := parseString(base + line + "\n")
	if err != nil {
		return "", err
	}
	name, _, _ := splitLine(line)
	return c.Get(name)
}

func TestValues(t *testing.T) {
	tests := []struct {
		line, want string // want: Get's value, or the error after "x.conf:2: "
	}{
		// STR and quoting
		{"proxy_name mail gate", "mail gate"},
		{`proxy_name "mail gate "`, "mail gate "},
		{`proxy_name ""`, ""},
		{"proxy_name", ""},
		{`proxy_name "`, `"`},
		{`proxy_name ""x""`, `"x"`},
		{"proxy_name a # not a comment", "a # not a comment"},
		{"proxy_name\t\tx\t", "x"},
		// PORT
		{"port 25", "25"},
		{"port 65535", "65535"},
		{"port 0x1F", "31"},
		{"port 010", "8"},
		{"port 0", `port: "0" is out of range; accepted: a port number 1-65535`},
		{"port 99999", `port: "99999" is out of range; accepted: a port number 1-65535`},
		{"port -1", `port: "-1" is out of range; accepted: a port number 1-65535`},
		{"port smtp", `port: "smtp" is not a number; accepted: a port number 1-65535`},
		{"port", `port: missing value; accepted: a port number 1-65535`},
		{"port 09", `port: "09" is not a number; accepted: a port number 1-65535`},
		{"port 1_0", `port: "1_0" is not a number; accepted: a port number 1-65535`},
		// UINT
		{"buffer_size 0", "0"},
		{"buffer_size 0X10", "16"},
		{"buffer_size 18446744073709551615", "18446744073709551615"},
		{"buffer_size 18446744073709551616", `buffer_size: "18446744073709551616" is out of range; accepted: an unsigned integer (decimal, 0octal or 0xhex)`},
		{"buffer_size -0", "0"},
		{"buffer_size -3", `buffer_size: "-3" is out of range; accepted: an unsigned integer (decimal, 0octal or 0xhex)`},
		{"buffer_size 1.5", `buffer_size: "1.5" is not a number; accepted: an unsigned integer (decimal, 0octal or 0xhex)`},
		{"buffer_size 1k", `buffer_size: "1k" is not a number; accepted: an unsigned integer (decimal, 0octal or 0xhex)`},
		{"buffer_size 0x", `buffer_size: "0x" is not a number; accepted: an unsigned integer (decimal, 0octal or 0xhex)`},
		// INT
		{"priority -20", "-20"},
		{"priority +7", "7"},
		{"priority -0x10", "-16"},
		{"priority -9223372036854775808", "-9223372036854775808"},
		{"priority 9223372036854775808", `priority: "9223372036854775808" is out of range; accepted: an integer (decimal, 0octal or 0xhex)`},
		{"priority --1", `priority: "--1" is not a number; accepted: an integer (decimal, 0octal or 0xhex)`},
		{"lock_duration -1", "-1"},
		{"lock_duration -2", `lock_duration: "-2" is out of range; accepted: an integer of at least -1 (decimal, 0octal or 0xhex)`},
		{"connect_queue -1", `connect_queue: "-1" is out of range; accepted: an integer of at least 0 (decimal, 0octal or 0xhex)`},
		// INT with size suffix
		{"limit_core_size 64M", "64M"},
		{"limit_core_size 64 m", "64M"},
		{"limit_core_size 2048K", "2M"},
		{"limit_core_size 0x10k", "16K"},
		{"limit_core_size 3g", "3G"},
		{"limit_core_size 1025", "1025"},
		{"limit_core_size 0", "0"},
		{"limit_core_size -1", "-1"},
		{"limit_core_size 8589934591G", "8589934591G"},
		{"limit_core_size 8589934592G", `limit_core_size: "8589934592G" is out of range; accepted: a number of bytes (decimal, 0octal or 0xhex) with an optional k, m or g suffix, or -1`},
		{"limit_core_size -2", `limit_core_size: "-2" is out of range; accepted: a number of bytes (decimal, 0octal or 0xhex) with an optional k, m or g suffix, or -1`},
		{"limit_core_size M", `limit_core_size: "M" is not a number; accepted: a number of bytes (decimal, 0octal or 0xhex) with an optional k, m or g suffix, or -1`},
		{"limit_core_size 1T", `limit_core_size: "1T" is not a number; accepted: a number of bytes (decimal, 0octal or 0xhex) with an optional k, m or g suffix, or -1`},
		// FLOAT
		{"max_load 0.5", "0.5"},
		{"max_load 1e1", "10"},
		{"max_load 2", "2"},
		{"max_load -1", `max_load: "-1" is out of range; accepted: a decimal number of at least 0`},
		{"max_load NaN", `max_load: "NaN" is not a number; accepted: a decimal number of at least 0`},
		{"max_load inf", `max_load: "inf" is out of range; accepted: a decimal number of at least 0`},
		{"max_load 1e999", `max_load: "1e999" is out of range; accepted: a decimal number of at least 0`},
		{"max_load high", `max_load: "high" is not a number; accepted: a decimal number of at least 0`},
		{"spam_threshold -2.5", "-2.5"},
		// BOOL
		{"log_helo 1", "yes"},
		{"log_helo YES", "yes"},
		{"log_helo On", "yes"},
		{"log_helo true", "yes"},
		{"log_helo 0", "no"},
		{"log_helo No", "no"},
		{"log_helo OFF", "no"},
		{"log_helo False", "no"},
		{"log_helo 2", `log_helo: "2" is not a boolean; accepted: 1, yes, on, true, 0, no, off, false`},
		{"log_helo y", `log_helo: "y" is not a boolean; accepted: 1, yes, on, true, 0, no, off, false`},
		{"log_helo", `log_helo: missing value; accepted: 1, yes, on, true, 0, no, off, false`},
		// IP
		{"bind_address 10.1.2.3", "10.1.2.3"},
		{"bind_address ::", "::"},
		{"bind_address ::FFFF:10.0.0.1", "::ffff:10.0.0.1"},
		{"bind_address fe80::1%eth0", "fe80::1%eth0"},
		{"bind_address 10.1.2", "10.1.0.2"}, // inet_aton's short forms
		{"bind_address 127.1", "127.0.0.1"},
		{"bind_address 0x7f.1", "127.0.0.1"},
		{"bind_address 10.256.1", `bind_address: "10.256.1" is not an IP address; accepted: an IPv4 or IPv6 address`},
		{"bind_address 10.1.65536", `bind_address: "10.1.65536" is not an IP address; accepted: an IPv4 or IPv6 address`},
		{"bind_address 1.2.3.4.5", `bind_address: "1.2.3.4.5" is not an IP address; accepted: an IPv4 or IPv6 address`},
		{"bind_address 1.2.3.4foo", `bind_address: "1.2.3.4foo" is not an IP address; accepted: an IPv4 or IPv6 address`},
		{"bind_address localhost", `bind_address: "localhost" is not an IP address; accepted: an IPv4 or IPv6 address`},
		{`bind_address ""`, `bind_address: missing value; accepted: an IPv4 or IPv6 address`},
		{`spf_fixed_ip ""`, ""},
		{"spf_fixed_ip [::1]", `spf_fixed_ip: "[::1]" is not an IP address; accepted: an IPv4 or IPv6 address, or "" for none`},
		// OCTAL
		{"lock_perm 0600", "0600"},
		{"lock_perm 600", "0600"},
		{"lock_perm 0", "0000"},
		{"lock_perm 07777", "7777"},
		{"lock_perm 010000", `lock_perm: "010000" is out of range; accepted: an octal file mode 0000-07777`},
		{"lock_perm 0680", `lock_perm: "0680" is not an octal number; accepted: an octal file mode 0000-07777`},
		{"lock_perm 0x1b0", "0660"},
		{"lock_perm 0x1g0", `lock_perm: "0x1g0" is not an octal number; accepted: an octal file mode 0000-07777`},
		{"lock_perm -0600", `lock_perm: "-0600" is not an octal number; accepted: an octal file mode 0000-07777`},
		// REGEX
		{`regex_reject_helo ^\[`, `^\[`},
		{`regex_reject_helo (`, `regex_reject_helo: "(" is not a valid regular expression (missing closing )); accepted: a Go regular expression (RE2 syntax), or "" for none`},
		{`regex_reject_helo x**`, `regex_reject_helo: "x**" is not a valid regular expression (invalid nested repetition operator); accepted: a Go regular expression (RE2 syntax), or "" for none`},
		// ENUM ONE
		{"mode fixed", "mode: fixed needs fixed_server, which is not set; accepted: set fixed_server to the mail server's address, or choose another mode"},
		{"mode netfilter", "netfilter"},
		{"mode TPROXY,netfilter", "tproxy,netfilter"},
		// numbers are the original's
		{"mode 8", "netfilter"},
		{"mode 5", "remote"},
		{"mode 7", "getsockname"},
		{"mode 9", "ipfw"},
		{"mode 10", "ipfilter"},
		{"mode 11", "tproxy"},
		{"mode 12", "tproxy,netfilter"},
		{"mode 13", "pf"},
		{"mode 0", `mode: "none" is not a mode; accepted: fixed, fixed+xclient, remote, remote-udp, getsockname, netfilter, tproxy, tproxy,netfilter, ipfw, ipfilter, pf`},
		{"mode 3", `mode: "3" is out of range; accepted: fixed, fixed+xclient, remote, remote-udp, getsockname, netfilter, tproxy, tproxy,netfilter, ipfw, ipfilter, pf`},
		{"mode 14", `mode: "14" is out of range; accepted: fixed, fixed+xclient, remote, remote-udp, getsockname, netfilter, tproxy, tproxy,netfilter, ipfw, ipfilter, pf`},
		{"mode nat", `mode: unknown value "nat"; accepted: fixed, fixed+xclient, remote, remote-udp, getsockname, netfilter, tproxy, tproxy,netfilter, ipfw, ipfilter, pf`},
		{"log_level 7", "debug"},
		{"log_level 0", "emerg"},
		{"log_level 3", "err"},
		{"log_level Notice", "notice"},
		{"log_level 8", `log_level: "8" is out of range; accepted: debug, info, notice, warning, err, crit, alert, emerg`},
		{"log_facility 8", "user"},
		{"log_facility 24", "daemon"},
		{"log_facility 80", "authpriv"},
		{"log_facility 184", "local7"},
		{"log_facility 3", `log_facility: "3" is out of range; accepted: user, mail, daemon, auth, news, authpriv, local0, local1, local2, local3, local4, local5, local6, local7`},
		{"log_facility kern", `log_facility: unknown value "kern"; accepted: user, mail, daemon, auth, news, authpriv, local0, local1, local2, local3, local4, local5, local6, local7`},
		{"auth_require 2", "mandatory"},
		{"auth_require -1", `auth_require: unknown value "-1"; accepted: no, ifsupported, mandatory`},
		{"nat_header_type generic", "simple"},
		{"nat_header_type simple", "simple"},
		{"nat_header_type 2", "ip-only"},
		{"spf off", "none"},
		{"spf none", "none"},
		{"spf source", "incoming"},
		{"spf 2", "outgoing"},
		{"antivirus_type none", "off"},
		{"antivirus_type mksd", "mksd"},
		{"antispam_type none", "off"},
		{"antispam_type 3", "spamassassin"},
		{"antispam_type 1", `antispam_type: "1" is out of range; accepted: off, spamassassin`},
		{"antispam_type libdspam", `antispam_type: libdspam is not supported in this build; use spamassassin (spamd) instead; accepted: off, spamassassin`},
		{"antispam_type 4", `antispam_type: libdspam is not supported in this build; use spamassassin (spamd) instead; accepted: off, spamassassin`},
		{"antivirus_type 3", "clamd"},
		{"antivirus_type 4", "mksd"},
		{"antivirus_type 1", `antivirus_type: "1" is out of range; accepted: off, clamd, mksd`},
		// ENUM MULTI
		{"lock_on virus,spam", "virus,spam"},
		{"lock_on ratelimit , maxhost,  maxident", "maxhost,maxident,ratelimit"},
		{"lock_on earlytalk", "earlytalker"},
		{"lock_on EarlyTalker", "earlytalker"},
		{"lock_on never", "never"},
		{"lock_on never,never", "never"},
		{"lock_on any", "virus,spam,maxhost,maxident,dnsbl,spf,regex,earlytalker,ratelimit"},
		{"lock_on 3", "virus,spam"},
		{"lock_on 0", "never"},
		{"lock_on 0x100,1", "virus,dnsbl"},
		{"lock_on 0x200", "regex"},
		{"lock_on 0x10", "maxhost"},
		{"lock_on 0x800", "earlytalker"},
		{"lock_on 0x1000", "ratelimit"},
		{"lock_on 4", `lock_on: "4" is out of range; accepted: virus, spam, maxhost, maxident, dnsbl, spf, regex, earlytalker, ratelimit, never (comma-separated)`},
		{"lock_on virsu", `lock_on: unknown value "virsu"; accepted: virus, spam, maxhost, maxident, dnsbl, spf, regex, earlytalker, ratelimit, never (comma-separated)`},
		{"lock_on virus,,spam", `lock_on: empty item in "virus,,spam"; accepted: virus, spam, maxhost, maxident, dnsbl, spf, regex, earlytalker, ratelimit, never (comma-separated)`},
		{"lock_on virus,never", `lock_on: "never" cannot be combined with other values; accepted: virus, spam, maxhost, maxident, dnsbl, spf, regex, earlytalker, ratelimit, never (comma-separated)`},
		{`lock_on ""`, `lock_on: missing value; accepted: virus, spam, maxhost, maxident, dnsbl, spf, regex, earlytalker, ratelimit, never (comma-separated)`},
		{"statefile_type flat,slots", "flat,slots"},
		{"statefile_type 0", "human"},
		{"statefile_type 4", "human,slots"},
		{"statefile_type 2", "flat"},
		{"statefile_type 6", "flat,slots"},
		{"statefile_type 1", `statefile_type: "1" is out of range; accepted: human, flat, slots (comma-separated)`},
		{"spool_leave_on 8", "always"},
		{"spool_leave_on 5", "error,virus"},
		{"log_mail_from 5", "accepted,base64"},
		{"log_mail_from 8", "off"},
		{"spool_leave_on always", "always"},
		{"spool_leave_on never", "never"},
		{"spool_leave_on error,virus,spam", "error,spam,virus"},
		{"log_mail_from no", "off"},
		{"log_mail_from NONE", "off"},
		{"log_mail_from off", "off"},
		{"log_rcpt_to accepted,rejected", "accepted,rejected"},
		{"log_rcpt_to accepted,no", `log_rcpt_to: "off" cannot be combined with other values; accepted: accepted, rejected, base64, off (comma-separated)`},
		{"auth_skip 0", "none"},
		{"auth_skip none", "none"},
		{"auth_skip direct", "direct"},
		{"auth_skip dnsbl,regex", "dnsbl,regex"},
		{"auth_skip 31", "direct,antivir,antispam,dnsbl,regex"},
		{"auth_skip 1", "antivir"},
		{"auth_skip 0x10", "direct"},
		{"auth_skip 4", "regex"},
		{"auth_skip 8", "dnsbl"},
	}
	for _, tt := range tests {
		got, err := value(tt.line)
		if err != nil {
			got = strings.TrimPrefix(err.Error(), "x.conf:2: ")
		}
		if got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestOptionAliases(t *testing.T) {
	tests := []struct{ line, name, want string }{
		{"ratelimit_expiration 60", "ratelimit_period", "60"},
		{"ratelimit_period 61", "ratelimit_expiration", "61"},
		{"ratelimit_messages 7", "ratelimit_sessions", "7"},
		{"ratelimit_sessions 8", "ratelimit_messages", "8"},
		{"earlytalk no", "earlytalker", "no"},
		{"source_addr 10.0.0.9", "outgoing_addr", "10.0.0.9"},
		{"dumpfile /tmp/st", "statefile", "/tmp/st"},
		{"dumpfile_perm 0644", "statefile_perm", "0644"},
		{"max_spam_size 123", "spam_max_size", "123"},
	}
	for _, tt := range tests {
		c, err := parseString(base + tt.line)
		if err != nil {
			t.Errorf("%q: %v", tt.line, err)
			continue
		}
		if got, _ := c.Get(tt.name); got != tt.want {
			t.Errorf("%q: %s: got %q, want %q", tt.line, tt.name, got, tt.want)
		}
	}
	c, err := parseString(base + "ratelimit_expiration 60\nratelimit_messages 5\nearlytalk 0\n")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := c.Write(&b, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\nratelimit_period 60\n", "\nratelimit_sessions 5\n", "\nearlytalker no\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("Write output lacks %q", want)
		}
	}
}

func TestFileSyntax(t *testing.T) {
	tests := []struct{ name, file, opt, want string }{
		{"comments and blanks", "# c\n  ; c\n\n \t \nport 26\n\t# port 27\n", "port", "26"},
		{"leading blanks", "   port\t  26", "port", "26"},
		{"CRLF", "port 26\r\nproxy_name a b\r\n", "proxy_name", "a b"},
		{"last wins", "port 26\nport 27\n", "port", "27"},
		{"alias then name", "ratelimit_period 5\nratelimit_expiration 6\n", "ratelimit_period", "6"},
		{"quoted", `proxy_name " x "`, "proxy_name", " x "},
		{"inner quotes", `proxy_name a "b" c`, "proxy_name", `a "b" c`},
		{"scanner_path ignored", "scanner_path /usr/bin/clamdscan\nport 30\n", "port", "30"},
		{"byte order mark", "\ufeffport 29\n", "port", "29"},
	}
	for _, tt := range tests {
		c, err := parseString(tt.file + "\n" + base)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got, _ := c.Get(tt.opt); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
	if c, err := parseString("mode pf\nport 28"); err != nil || c.Port != 28 {
		t.Errorf("no final newline: got %v, want port 28", err)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct{ name, file, want string }{
		{"unknown", "mode getsockname\n\n\n\n\n\nfrobnicate 1\n", "x.conf:7: frobnicate: unknown option"},
		{"case", "Port 25\nmode pf", "x.conf:1: Port: unknown option"},
		{"db", "db_host localhost\nmode pf", "x.conf:1: db_host: not supported by this version"},
		{"on_virus", "mode pf\non_virus lock\n", "x.conf:2: on_virus: not supported by this version"},
		{"on_spam_flood", "mode pf\non_spam_flood 3\n", "x.conf:2: on_spam_flood: not supported by this version"},
		{"on_host_flood", "mode pf\non_host_flood 3\n", "x.conf:2: on_host_flood: not supported by this version"},
		{"use_netfilter", "use_netfilter 1\n", `x.conf:1: use_netfilter: no longer supported: replaced by "mode netfilter"`},
		{"control chars", "mode pf\nfoo\x01 1\n", `x.conf:2: "foo\x01": unknown option`},
		{"first of several", "mode pf\nport 0\nlog_helo 2\n", "x.conf:2: port: \"0\" is out of range; accepted: a port number 1-65535\nx.conf:3: log_helo: \"2\" is not a boolean; accepted: 1, yes, on, true, 0, no, off, false"},
		{"mode none", "port 25\nmode none\n", `x.conf:2: mode: "none" is not a mode; accepted: fixed, fixed+xclient, remote, remote-udp, getsockname, netfilter, tproxy, tproxy,netfilter, ipfw, ipfilter, pf`},
		{"fixed", "port 25\nmode fixed\n", "x.conf:2: mode: fixed needs fixed_server, which is not set; accepted: set fixed_server to the mail server's address, or choose another mode"},
		{"fixed emptied", "fixed_server 10.0.0.1\nmode fixed\nfixed_server \"\"\n", "x.conf:2: mode: fixed needs fixed_server, which is not set; accepted: set fixed_server to the mail server's address, or choose another mode"},
		{"spf fixed", "mode pf\nspf fixed\n", "x.conf:2: spf: fixed needs spf_fixed_ip, which is not set; accepted: set spf_fixed_ip, or choose another spf mode"},
		{"bad line hides checks", "port x\n", `x.conf:1: port: "x" is not a number; accepted: a port number 1-65535`},
	}
	for _, tt := range tests {
		_, err := parseString(tt.file)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: got error %v, want %s", tt.name, err, tt.want)
		}
	}

	_, err := parseString("mode pf\n\nport 99999\n")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %T, want *Error", err)
	}
	want := Error{File: "x.conf", Line: 3, Option: "port", Msg: `"99999" is out of range`, Accepted: "a port number 1-65535"}
	if *e != want {
		t.Errorf("got %+v, want %+v", *e, want)
	}

	_, err = parseString(strings.Repeat("bad 1\n", 50))
	if n := strings.Count(err.Error(), "\n") + 1; n != maxErrors+1 {
		t.Errorf("got %d error lines, want %d", n, maxErrors+1)
	}
	if !strings.HasSuffix(err.Error(), "x.conf:20: too many errors, stopping") {
		t.Errorf("got %q, want the last line to say it stopped", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "smtp-gated.conf")
	if err := os.WriteFile(p, []byte("mode netfilter\nport 99999\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if want := p + `:2: port: "99999" is out of range; accepted: a port number 1-65535`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if _, err := Load(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func TestGet(t *testing.T) {
	c := Default()
	tests := []struct{ name, want string }{
		{"port", "9199"},
		{"ratelimit_period", "0"},
		{"ratelimit_expiration", "0"},
		{"statefile_perm", "0660"},
		{"statefile_type", "human,slots"},
		{"lock_on", "virus"},
		{"limit_fsize", "100M"},
		{"fixed_server", ""},
		{"mode", "none"},
		{"earlytalker", "yes"},
		{"nat_header_type", "simple"},
		{"spf", "none"},
		{"log_facility", "daemon"},
		{"log_level", "debug"},
		{"auth_skip", "none"},
		{"log_mail_from", "off"},
		{"msg_hello", "Hello"},
		{"timeout_shutdown", "60"},
		{"session_workers", "0"},
		{"control_socket", ""},
	}
	for _, tt := range tests {
		got, err := c.Get(tt.name)
		if err != nil || got != tt.want {
			t.Errorf("Get(%q): got %q, %v, want %q", tt.name, got, err, tt.want)
		}
	}
	for _, bad := range []string{"frobnicate", "scanner_path", "Port", ""} {
		if _, err := c.Get(bad); err == nil || err.Error() != bad+": unknown option" {
			t.Errorf("Get(%q): got %v, want an unknown option error", bad, err)
		}
	}
}

func TestRestartOnly(t *testing.T) {
	old := Default()
	c := Default()
	c.Port = 2525
	c.MaxPerHost = 1 // reloadable
	c.LogFacility = FacilityMail
	c.Mode = ModePf
	c.TimeoutShutdown = 1 // reloadable
	c.SessionWorkers = 2
	got := RestartOnly(old, c)
	want := []string{"port", "session_workers", "mode", "log_facility"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := RestartOnly(old, Default()); len(got) != 0 {
		t.Errorf("got %v for equal configurations, want none", got)
	}
	var restart []string
	for _, s := range sections {
		for _, op := range s.opts {
			if op.restart {
				restart = append(restart, op.name)
			}
		}
	}
	wantRestart := []string{"bind_address", "port", "pidfile", "chroot_path", "set_user", "set_group", "priority",
		"session_workers", "control_socket", "limit_core_size", "limit_virt_size", "limit_data_size", "limit_fsize",
		"mode", "spool_path", "max_connections", "log_level", "log_facility"}
	if !slices.Equal(restart, wantRestart) {
		t.Errorf("[RESTART] options: got %v, want %v", restart, wantRestart)
	}
}

func TestWriteQuoting(t *testing.T) {
	c := Default()
	c.Mode = ModePf
	for _, v := range []string{"", " ", "a b", "\"", `"x"`, "#", ";x", "a\tb", "x\r", "\x00\x7f", "ünï", "trailing "} {
		c.Abuse = v
		if got := roundTrip(t, c); got.Abuse != v {
			t.Errorf("abuse %q: got %q back", v, got.Abuse)
		}
	}
	c.Abuse = "two\nlines"
	if err := c.Write(&bytes.Buffer{}, true); err == nil {
		t.Errorf("Write of a value with a newline: got no error")
	}
}

func TestWriteMessages(t *testing.T) {
	var with, without bytes.Buffer
	c := Default()
	if err := c.Write(&with, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(&without, false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(without.String(), "msg_") {
		t.Errorf("Write without messages has msg_ lines")
	}
	if !strings.Contains(without.String(), "\nlocale \"\"\n") {
		t.Errorf("Write without messages lacks locale")
	}
	if n := strings.Count(with.String(), "\nmsg_"); n != 51 {
		t.Errorf("got %d msg_ lines, want 51", n)
	}
	for _, line := range strings.Split(with.String(), "\n") {
		if line != "" && line[0] != '#' && !slices.Contains(Names(), strings.Fields(line)[0]) {
			t.Errorf("Write printed %q, which is not a canonical name", line)
		}
	}
}

func TestDefaultMessages(t *testing.T) {
	c := Default()
	for _, n := range Names() {
		if !strings.HasPrefix(n, "msg_") {
			continue
		}
		v, _ := c.Get(n)
		if v == "" || strings.ContainsAny(v, "\r\n") || strings.TrimSpace(v) != v {
			t.Errorf("%s: default %q is empty or has line breaks or outer blanks", n, v)
		}
	}
}

func TestEnumStrings(t *testing.T) {
	tests := []struct {
		got  interface{ String() string }
		want string
	}{
		{ModeNone, "none"},
		{ModeFixedXclient, "fixed+xclient"},
		{ModeTproxyNetfilter, "tproxy,netfilter"},
		{ModePf, "pf"},
		{Mode(99), "Mode(99)"},
		{LockVirus | LockEarlytalker, "virus,earlytalker"},
		{LockNever, "never"},
		{LockAny, "virus,spam,maxhost,maxident,dnsbl,spf,regex,earlytalker,ratelimit"},
		{LockOn(1 << 20), "0x100000"},
		{StatefileHuman | StatefileSlots, "human,slots"},
		{SpoolLeaveNever, "never"},
		{LogAddrOff, "off"},
		{LogAddrAccepted | LogAddrBase64, "accepted,base64"},
		{AuthSkipNone, "none"},
		{AuthSkipDirect, "direct"},
		{AuthIfSupported, "ifsupported"},
		{LogDebug, "debug"},
		{LogEmerg, "emerg"},
		{FacilityLocal7, "local7"},
		{Facility(0), "Facility(0)"},
		{NatHeaderGeneric, "simple"},
		{AntivirusClamd, "clamd"},
		{AntispamSpamassassin, "spamassassin"},
		{SPFOff, "none"},
	}
	for _, tt := range tests {
		if s := tt.got.String(); s != tt.want {
			t.Errorf("got %q, want %q", s, tt.want)
		}
	}
	if int(LogDebug) != 7 || int(LogErr) != 3 || int(LogEmerg) != 0 {
		t.Errorf("log levels are not the syslog priorities")
	}
	facilities := []struct {
		f        Facility
		num, pri int
	}{{FacilityUser, 1, 8}, {FacilityMail, 2, 16}, {FacilityDaemon, 3, 24}, {FacilityAuth, 4, 32},
		{FacilityNews, 7, 56}, {FacilityAuthpriv, 10, 80}, {FacilityLocal0, 16, 128}, {FacilityLocal7, 23, 184}}
	for _, tt := range facilities {
		if int(tt.f) != tt.num || tt.f.Syslog() != tt.pri {
			t.Errorf("%v: got %d and Syslog() %d, want %d and %d", tt.f, int(tt.f), tt.f.Syslog(), tt.num, tt.pri)
		}
	}
}

func TestHas(t *testing.T) {
	s := LockVirus | LockSpam
	tests := []struct {
		got, want bool
	}{
		{s.Has(LockVirus), true},
		{s.Has(LockSpam | LockVirus), true},
		{s.Has(LockVirus | LockDNSBL), false},
		{s.Has(LockNever), false},
		{LockNever.Has(LockNever), true},
		{LockNever.Has(LockVirus), false},
		{LockAny.Has(LockRatelimit), true},
		{(SpoolLeaveError | SpoolLeaveAlways).Has(SpoolLeaveAlways), true},
		{SpoolLeaveNever.Has(SpoolLeaveNever), true},
		{LogAddrOff.Has(LogAddrBase64), false},
		{(AuthSkipDirect).Has(AuthSkipDirect), true},
		{AuthSkipNone.Has(AuthSkipNone), true},
		{(StatefileFlat).Has(StatefileHuman), false},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("case %d: got %v, want %v", i, tt.got, tt.want)
		}
	}
	if !ModeFixedXclient.Fixed() || ModePf.Fixed() || !ModeRemoteUDP.Remote() || ModeFixed.Remote() {
		t.Errorf("Mode.Fixed/Remote wrong")
	}
}

func TestProxyHostName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	tests := []struct{ name, want string }{
		{"*", host},
		{"gw.example.org", "gw.example.org"},
		{"smtp-gated@*", "smtp-gated@" + host},
	}
	for _, tt := range tests {
		c := &Config{ProxyName: tt.name}
		if got := c.ProxyHostName(); got != tt.want {
			t.Errorf("%q: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestDnsblZones(t *testing.T) {
	c := &Config{Dnsbl: " zen.example.org, ,bl.example.net,"}
	if got, want := c.DnsblZones(), []string{"zen.example.org", "bl.example.net"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := (&Config{}).DnsblZones(); got != nil {
		t.Errorf("got %v, want nil", got)
	}
}

func TestParsedTypes(t *testing.T) {
	c, err := parseString("mode fixed\nfixed_server 192.0.2.1\nlimit_fsize 1k\nstatefile_perm 0644\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != ModeFixed || c.FixedServer != netip.MustParseAddr("192.0.2.1") || c.LimitFsize != 1024 || c.StatefilePerm != 0o644 {
		t.Errorf("got mode %v server %v fsize %d perm %o", c.Mode, c.FixedServer, c.LimitFsize, c.StatefilePerm)
	}
	if c.RegexRejectHeloRE != nil {
		t.Errorf("empty regex compiled to %v, want nil", c.RegexRejectHeloRE)
	}
}

// Under chroot_path every path option names a path inside it, as in 1.4:
// HostPath and OnHost put chroot_path in front of each, and of nothing
// else.
func TestChrootPaths(t *testing.T) {
	cfg, err := Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nchroot_path /jail\n"+
		"pidfile /run/sg.pid\nstatefile /run/sg.state\nspool_path /spool\nlock_path /lock\n"+
		"ratelimit_path /rate\naction_script /bin/act\nantivirus_path /run/clamd.ctl\nantispam_path 127.0.0.1:783\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.HostPath(cfg.Pidfile); got != "/jail/run/sg.pid" {
		t.Errorf("HostPath(pidfile) = %q", got)
	}
	if got := cfg.HostPath(""); got != "" {
		t.Errorf("HostPath(\"\") = %q", got)
	}
	if got, set := cfg.ControlSocketPath(); got != "/jail/run/control.sock" || set {
		t.Errorf("ControlSocketPath() = %q, %v", got, set)
	}
	h := cfg.OnHost()
	for name, got := range map[string]string{
		"pidfile": h.Pidfile, "statefile": h.Statefile, "spool_path": h.SpoolPath, "lock_path": h.LockPath,
		"ratelimit_path": h.RatelimitPath, "action_script": h.ActionScript, "antivirus_path": h.AntivirusPath,
		"antispam_path": h.AntispamPath, "chroot_path": h.ChrootPath, "dspam_storage": h.DspamStorage,
	} {
		want := map[string]string{"pidfile": "/jail/run/sg.pid", "statefile": "/jail/run/sg.state", "spool_path": "/jail/spool",
			"lock_path": "/jail/lock", "ratelimit_path": "/jail/rate", "action_script": "/jail/bin/act",
			"antivirus_path": "/jail/run/clamd.ctl", "antispam_path": "127.0.0.1:783", "chroot_path": "",
			"dspam_storage": "/jail/var/spool/smtp-gated/dspam"}[name]
		if got != want {
			t.Errorf("OnHost: %s %q, want %q", name, got, want)
		}
	}
	if got, _ := h.ControlSocketPath(); got != "/jail/run/control.sock" {
		t.Errorf("OnHost: ControlSocketPath() = %q", got)
	}
	if cfg.Pidfile != "/run/sg.pid" || cfg.ChrootPath != "/jail" {
		t.Error("OnHost changed its receiver")
	}
	// Every string option whose default is a path is one of them.
	d := Default()
	d.ChrootPath = "/jail"
	dh := d.OnHost()
	dv, hv := reflect.ValueOf(d).Elem(), reflect.ValueOf(dh).Elem()
	for i := range dv.NumField() {
		f := dv.Type().Field(i)
		if f.Type.Kind() != reflect.String || !strings.HasPrefix(dv.Field(i).String(), "/") || f.Name == "ChrootPath" {
			continue
		}
		if hv.Field(i).String() != "/jail"+dv.Field(i).String() {
			t.Errorf("%s (default %q) is a path that OnHost leaves alone", f.Name, dv.Field(i).String())
		}
	}
	// Without chroot_path nothing changes.
	if d := Default(); d.OnHost() != d || d.HostPath("/x") != "/x" {
		t.Error("without chroot_path, paths changed")
	}
}
