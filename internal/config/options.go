package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
)

// option describes one option of the file. Its Go type, and so its syntax,
// is the type of the Config field it fills.
type option struct {
	name    string   // canonical name, printed by Write
	code    string   // name in the original's code, when the manual's differs; the field is named after it
	aliases []string // other names accepted
	restart bool     // [RESTART]: a reload cannot change it
	min     int64    // INT: smallest value accepted (when hasMin)
	hasMin  bool
	noNeg   bool // FLOAT: refuse negative numbers
	emptyIP bool // IP: "" (unset) is accepted

	index []int    // of the field in Config
	re    []int    // regex_*: index of the compiled field
	enum  *enumDef // ENUM
	kind  kind
}

type kind int

const (
	kString kind = iota
	kRegex
	kIP
	kPort
	kUint
	kInt
	kSize // INT with a k/m/g suffix (limit_*)
	kFloat
	kBool
	kOctal
	kOne
	kMulti
)

// section is a group of options, as the manual groups them.
type section struct {
	title    string
	messages bool // msg_*: written only when asked for
	opts     []*option
}

// Helpers for the table below.
func o(name string) *option             { return &option{name: name} }
func (op *option) restartOnly() *option { op.restart = true; return op }
func (op *option) alias(a ...string) *option {
	op.aliases = append(op.aliases, a...)
	return op
}
func (op *option) atLeast(lo int64) *option { op.min, op.hasMin = lo, true; return op }

var sections = []*section{
	{title: "MAIN OPTIONS", opts: []*option{
		o("proxy_name"),
		o("bind_address").restartOnly(),
		o("port").restartOnly(),
		o("outgoing_addr").alias("source_addr"),
		o("pidfile").restartOnly(),
		o("chroot_path").restartOnly(),
		o("set_user").restartOnly(),
		o("set_group").restartOnly(),
		o("priority").restartOnly(),
		o("connect_queue").atLeast(0),
		o("enfile_sleep").atLeast(0),
		o("on_takeover_cmds"),
		o("buffer_size"),
		o("pipeline_size"),
		o("pid_hash_size"),
		o("host_hash_size"),
		o("session_workers").restartOnly(),
		o("control_socket").restartOnly(),
	}},
	{title: "RESOURCE CONTROL", opts: []*option{
		o("limit_core_size").restartOnly(),
		o("limit_virt_size").restartOnly(),
		o("limit_data_size").restartOnly(),
		o("limit_fsize").restartOnly(),
	}},
	{title: "MODE", opts: []*option{
		o("mode").restartOnly(),
		{name: "fixed_server", emptyIP: true},
		o("fixed_server_port"),
		o("remote_port"),
		o("remote_udp_retries").atLeast(0),
		o("remote_udp_secret"),
	}},
	{title: "STATUS", opts: []*option{
		o("statefile").alias("dumpfile"),
		o("statefile_perm").alias("dumpfile_perm"),
		o("statefile_type"),
	}},
	{title: "LOCKING", opts: []*option{
		o("lock_on"),
		o("lock_duration").atLeast(-1),
		o("lock_path"),
		o("lock_perm"),
	}},
	{title: "ACTION SCRIPT", opts: []*option{
		o("action_script"),
	}},
	{title: "SPOOLING", opts: []*option{
		o("spool_path").restartOnly(),
		o("spool_perm"),
		o("spool_leave_on"),
	}},
	{title: "TIMEOUTS", opts: []*option{
		o("timeout_direct"),
		o("timeout_lookup"),
		o("timeout_scanner"),
		o("timeout_spam"),
		o("timeout_session"),
		o("timeout_idle"),
		o("timeout_connect"),
		o("timeout_shutdown"),
	}},
	{title: "AUTHENTICATION CONTROL", opts: []*option{
		o("auth_require"),
		o("auth_skip"),
	}},
	{title: "LIMITS", opts: []*option{
		o("max_connections").restartOnly(),
		o("max_per_host"),
		o("max_per_ident"),
		{name: "max_load", noNeg: true},
		o("size_limit"),
		o("scan_max_size"),
		o("spam_max_size").alias("max_spam_size"),
		{name: "spam_max_load", noNeg: true},
		o("spam_threshold"),
	}},
	{title: "MISCELLANEOUS", opts: []*option{
		o("ignore_errors"),
	}},
	{title: "LOGGING", opts: []*option{
		o("log_helo"),
		o("log_mail_from"),
		o("log_rcpt_to"),
		o("email_length"),
		o("log_level").restartOnly(),
		o("log_facility").restartOnly(),
	}},
	{title: "MANGLING", opts: []*option{
		o("nat_header"),
		o("nat_header_type"),
		o("spool_header"),
		o("abuse"),
	}},
	{title: "SCANNERS", opts: []*option{
		o("antivirus_type"),
		o("antivirus_path"),
		o("antispam_type"),
		o("antispam_path"),
		o("dspam_storage"),
		o("scan_stream"),
	}},
	{title: "DNSBL", opts: []*option{
		o("dnsbl"),
		o("dns_server"),
	}},
	{title: "SPF", opts: []*option{
		o("spf"),
		o("spf_log_only"),
		{name: "spf_fixed_ip", emptyIP: true},
	}},
	{title: "REGEX", opts: []*option{
		o("regex_enforce_helo"),
		o("regex_reject_helo"),
		o("regex_enforce_mail_from"),
		o("regex_reject_mail_from"),
		o("regex_enforce_rcpt_to"),
		o("regex_reject_rcpt_to"),
	}},
	{title: "EARLYTALK", opts: []*option{
		o("earlytalker").alias("earlytalk"),
	}},
	{title: "RATE LIMIT", opts: []*option{
		o("ratelimit_path"),
		{name: "ratelimit_period", code: "ratelimit_expiration", aliases: []string{"ratelimit_expiration"}, min: 0, hasMin: true},
		o("ratelimit_dst_expiration").atLeast(-1),
		o("ratelimit_generation"),
		o("ratelimit_connections"),
		{name: "ratelimit_sessions", code: "ratelimit_messages", aliases: []string{"ratelimit_messages"}},
		o("ratelimit_recipients"),
		o("ratelimit_bytes"),
		o("ratelimit_mailfrom_rejects"),
		o("ratelimit_rcptto_rejects"),
		o("ratelimit_auth_rejects"),
	}},
	{title: "COMMAND FILTER", opts: []*option{
		o("forbid_starttls"),
	}},
	{title: "MESSAGES", opts: []*option{
		o("locale"),
	}},
	{title: "MESSAGES MAIN", messages: true, opts: msgs(
		"virus_found", "virus_locked", "spam_found", "unknown_virus",
		"spool_problem", "spool_open_fail", "pipeline_full", "scanner_failed",
		"cannot_connect", "connect_timeout", "connect_failed", "nomem",
		"unknown_scanner", "loop_avoidance", "size_limit", "auth_required",
		"fixed_xclient_fail")},
	{title: "MESSAGES FAKE MSA SESSION", messages: true, opts: msgs(
		"hello", "sign_off", "virus_no_more", "session_timeout", "proto_error",
		"transaction_failed", "unimpl_command", "temp_unavail")},
	{title: "MESSAGES LIMITS", messages: true, opts: msgs(
		"max_reached", "max_per_host", "max_per_ident", "system_load")},
	{title: "MESSAGES FOR REMOTE IDENT MODE", messages: true, opts: msgs(
		"malformed_ip", "lookup_failed", "lookup_notfound", "lookup_timeout",
		"lookup_mismatch", "lookup_nomem", "lookup_unknown")},
	{title: "MESSAGES FOR CHECKS", messages: true, opts: msgs(
		"dnsdb_reject", "spf_reject", "earlytalker", "regex_helo",
		"regex_mail_from", "regex_rcpt_to", "rate_reject", "ratelimit_error",
		"ratelimit_helo", "ratelimit_mailfrom", "ratelimit_mailfrom_rejects",
		"ratelimit_messages", "ratelimit_rcptto", "ratelimit_rcptto_rejects",
		"ratelimit_dst")},
}

func msgs(names ...string) []*option {
	opts := make([]*option, len(names))
	for i, n := range names {
		opts[i] = o("msg_" + n)
	}
	return opts
}

// enumDefs gives the words of each enumerated field type.
var enumDefs = map[reflect.Type]*enumDef{
	reflect.TypeFor[Mode]():          modeDef,
	reflect.TypeFor[StatefileType](): statefileTypeDef,
	reflect.TypeFor[LockOn]():        lockOnDef,
	reflect.TypeFor[SpoolLeaveOn]():  spoolLeaveOnDef,
	reflect.TypeFor[LogAddr]():       logAddrDef,
	reflect.TypeFor[AuthRequire]():   authRequireDef,
	reflect.TypeFor[AuthSkip]():      authSkipDef,
	reflect.TypeFor[LogLevel]():      logLevelDef,
	reflect.TypeFor[Facility]():      facilityDef,
	reflect.TypeFor[NatHeaderType](): natHeaderTypeDef,
	reflect.TypeFor[AntivirusType](): antivirusTypeDef,
	reflect.TypeFor[AntispamType]():  antispamTypeDef,
	reflect.TypeFor[ScanStream]():    scanStreamDef,
	reflect.TypeFor[SPFMode]():       spfModeDef,
}

// byName finds an option by its canonical name or an alias.
var byName = map[string]*option{}

// Names of the original's options that this version refuses with a reason.
var removed = map[string]string{
	"use_netfilter": `replaced by "mode netfilter"`,
}

func init() {
	t := reflect.TypeFor[Config]()
	for _, s := range sections {
		for _, op := range s.opts {
			code := op.code
			if code == "" {
				code = op.name
			}
			f, ok := t.FieldByName(camel(code))
			if !ok {
				panic("config: no field for option " + op.name)
			}
			op.index = f.Index
			op.kind, op.enum = kindOf(op, f.Type)
			if op.kind == kRegex {
				rf, ok := t.FieldByName(f.Name + "RE")
				if !ok {
					panic("config: no compiled field for option " + op.name)
				}
				op.re = rf.Index
			}
			for _, n := range append([]string{op.name}, op.aliases...) {
				if byName[n] != nil {
					panic("config: option named twice: " + n)
				}
				byName[n] = op
			}
		}
	}
}

func kindOf(op *option, t reflect.Type) (kind, *enumDef) {
	if d, ok := enumDefs[t]; ok {
		if d.multi {
			return kMulti, d
		}
		return kOne, d
	}
	switch t {
	case reflect.TypeFor[string]():
		if strings.HasPrefix(op.name, "regex_") {
			return kRegex, nil
		}
		return kString, nil
	case reflect.TypeFor[netip.Addr]():
		return kIP, nil
	case reflect.TypeFor[uint16]():
		return kPort, nil
	case reflect.TypeFor[uint64]():
		return kUint, nil
	case reflect.TypeFor[int64]():
		if strings.HasPrefix(op.name, "limit_") {
			op.min, op.hasMin = -1, true
			return kSize, nil
		}
		return kInt, nil
	case reflect.TypeFor[float64]():
		return kFloat, nil
	case reflect.TypeFor[bool]():
		return kBool, nil
	case reflect.TypeFor[uint32]():
		return kOctal, nil
	}
	panic(fmt.Sprintf("config: option %s has unhandled type %v", op.name, t))
}

// camel turns an option name into its field name: lock_on → LockOn.
func camel(name string) string {
	var b strings.Builder
	for part := range strings.SplitSeq(name, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}

// accepted says what an option accepts, for error messages.
func (op *option) accepted() string {
	switch op.kind {
	case kString:
		return "any text"
	case kRegex:
		return `a Go regular expression (RE2 syntax), or "" for none`
	case kIP:
		if op.emptyIP {
			return `an IPv4 or IPv6 address, or "" for none`
		}
		return "an IPv4 or IPv6 address"
	case kPort:
		return "a port number 1-65535"
	case kUint:
		return "an unsigned integer (decimal, 0octal or 0xhex)"
	case kInt:
		if op.hasMin {
			return fmt.Sprintf("an integer of at least %d (decimal, 0octal or 0xhex)", op.min)
		}
		return "an integer (decimal, 0octal or 0xhex)"
	case kSize:
		return "a number of bytes (decimal, 0octal or 0xhex) with an optional k, m or g suffix, or -1"
	case kFloat:
		if op.noNeg {
			return "a decimal number of at least 0"
		}
		return "a decimal number"
	case kBool:
		return "1, yes, on, true, 0, no, off, false"
	case kOctal:
		return "an octal file mode 0000-07777"
	case kOne, kMulti:
		return op.enum.accepted()
	}
	return ""
}
