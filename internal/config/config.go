// Package config reads, checks and writes the smtp-gated configuration file
// described in smtp-gated.conf(5).
//
// A Config is a plain value: Load or Parse make one from a file, Default
// gives the built-in defaults, and Write prints one back in the file's own
// syntax (what smtp-gated -t/-T show, and what the master sends to its
// children, which parse it again). Field names are the CamelCase of the
// option names of the original program's code (ratelimit_expiration →
// RatelimitExpiration, even though the file prints the manual's name,
// ratelimit_period). Times are in seconds and sizes in bytes unless a
// field's comment says otherwise.
package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Config is the whole configuration. Each field's comment gives the option
// name (when it differs from the field name), its default and, for options
// a reload cannot change, [RESTART].
type Config struct {
	// MAIN OPTIONS

	ProxyName      string     // default "*" (the host name; see ProxyHostName)
	BindAddress    netip.Addr // default 0.0.0.0 [RESTART]
	Port           uint16     // default 9199 [RESTART]
	OutgoingAddr   netip.Addr // default 0.0.0.0 (old name source_addr)
	Pidfile        string     // default "/var/run/smtp-gated/smtp-gated.pid" [RESTART]
	ChrootPath     string     // default "" (no chroot) [RESTART]
	SetUser        string     // default "" [RESTART]
	SetGroup       string     // default "" [RESTART]
	Priority       int64      // default 0 (no change) [RESTART]
	ConnectQueue   int64      // default 16 (listen backlog)
	EnfileSleep    int64      // default 5 (seconds)
	OnTakeoverCmds uint64     // default 10
	BufferSize     uint64     // default 1516
	PipelineSize   uint64     // default 128
	PidHashSize    uint64     // default 4096
	HostHashSize   uint64     // default 4096
	SessionWorkers uint64     // default 0 (one per CPU) [RESTART] (added by this project)
	ControlSocket  string     // default "" (control.sock beside the pidfile; see ControlSocketPath) [RESTART] (added by this project)

	// RESOURCE CONTROL (bytes; -1 = leave the system's limit)

	LimitCoreSize int64 // default 64 MiB
	LimitVirtSize int64 // default 64 MiB
	LimitDataSize int64 // default 64 MiB
	LimitFsize    int64 // default 100 MiB

	// MODE

	Mode             Mode       // default ModeNone, which Parse refuses [RESTART]
	FixedServer      netip.Addr // default invalid (unset)
	FixedServerPort  uint16     // default 25
	RemotePort       uint16     // default 114
	RemoteUdpRetries int64      // default 3
	RemoteUdpSecret  int64      // default 0

	// STATUS

	Statefile     string        // default "/var/run/smtp-gated/state" (old name dumpfile)
	StatefilePerm uint32        // default 0660 (old name dumpfile_perm)
	StatefileType StatefileType // default StatefileHuman|StatefileSlots

	// LOCKING

	LockOn       LockOn // default LockVirus (see Default)
	LockDuration int64  // default 3600 (seconds; 0 = no locking, -1 = forever)
	LockPath     string // default "/var/spool/smtp-gated/lock"
	LockPerm     uint32 // default 0660

	// ACTION SCRIPT

	ActionScript string // default ""

	// SPOOLING

	SpoolPath    string       // default "/var/spool/smtp-gated/msg" [RESTART]
	SpoolPerm    uint32       // default 0660
	SpoolLeaveOn SpoolLeaveOn // default SpoolLeaveError

	// TIMEOUTS (seconds)

	TimeoutDirect   uint64 // default 300
	TimeoutLookup   uint64 // default 10
	TimeoutScanner  uint64 // default 30
	TimeoutSpam     uint64 // default 30
	TimeoutSession  uint64 // default 20
	TimeoutIdle     uint64 // default 300
	TimeoutConnect  uint64 // default 30
	TimeoutShutdown uint64 // default 60 (added by this project)

	// AUTHENTICATION CONTROL

	AuthRequire AuthRequire // default AuthNo
	AuthSkip    AuthSkip    // default AuthSkipNone

	// LIMITS

	MaxConnections uint64  // default 64 [RESTART]
	MaxPerHost     uint64  // default 8
	MaxPerIdent    uint64  // default 4
	MaxLoad        float64 // default 2 (0 = no limit)
	SizeLimit      uint64  // default 0 (no limit)
	ScanMaxSize    uint64  // default 10000000
	SpamMaxSize    uint64  // default 500000 (alias max_spam_size)
	SpamMaxLoad    float64 // default 1
	SpamThreshold  float64 // default 7

	// MISCELLANEOUS

	IgnoreErrors bool // default false

	// LOGGING

	LogHelo     bool     // default false
	LogMailFrom LogAddr  // default LogAddrOff
	LogRcptTo   LogAddr  // default LogAddrOff
	EmailLength uint64   // default 64
	LogLevel    LogLevel // default LogDebug [RESTART]
	LogFacility Facility // default FacilityDaemon [RESTART]

	// MANGLING

	NatHeader     string        // default "X-Nat-Received"
	NatHeaderType NatHeaderType // default NatHeaderGeneric (printed "simple")
	SpoolHeader   string        // default "X-Proxy-Spool-Info"
	Abuse         string        // default ""

	// SCANNERS

	AntivirusType AntivirusType // default AntivirusOff
	AntivirusPath string        // default "/var/run/clamav/clamd.ctl"
	AntispamType  AntispamType  // default AntispamOff
	AntispamPath  string        // default "/var/run/spamd/spamd_socket"
	DspamStorage  string        // default "/var/spool/smtp-gated/dspam" (unused: no libdspam)
	// ScanStream: send the message to clamd while it arrives; default
	// ScanStreamAuto (added by this project)
	ScanStream ScanStream

	// DNSBL

	Dnsbl string // default "" (comma-separated zones; see DnsblZones)
	// DnsServer: nameservers for DNSBL and SPF, "ip" or "ip:port",
	// comma-separated; default "" (those of /etc/resolv.conf, read at
	// start) (added by this project)
	DnsServer string

	// SPF

	Spf        SPFMode    // default SPFOff (printed "none")
	SpfLogOnly bool       // default false
	SpfFixedIp netip.Addr // default invalid (unset)

	// REGEX (Go regexp syntax; "" = no check). The *RE fields hold the
	// compiled forms, nil when the pattern is empty; Parse sets them, Write
	// ignores them.

	RegexEnforceHelo       string // default ""
	RegexRejectHelo        string // default ""
	RegexEnforceMailFrom   string // default ""
	RegexRejectMailFrom    string // default ""
	RegexEnforceRcptTo     string // default ""
	RegexRejectRcptTo      string // default ""
	RegexEnforceHeloRE     *regexp.Regexp
	RegexRejectHeloRE      *regexp.Regexp
	RegexEnforceMailFromRE *regexp.Regexp
	RegexRejectMailFromRE  *regexp.Regexp
	RegexEnforceRcptToRE   *regexp.Regexp
	RegexRejectRcptToRE    *regexp.Regexp

	// EARLYTALK

	Earlytalker bool // default true (alias earlytalk)

	// RATE LIMIT

	RatelimitPath            string // default "/var/spool/smtp-gated/ratelimit"
	RatelimitExpiration      int64  // ratelimit_period, default 0 (seconds; 0 = no rate limits)
	RatelimitDstExpiration   int64  // default -1
	RatelimitGeneration      uint64 // default 0
	RatelimitConnections     uint64 // default 0 (0 = no limit, for each ratelimit_* count)
	RatelimitMessages        uint64 // ratelimit_sessions, default 0
	RatelimitRecipients      uint64 // default 0
	RatelimitBytes           uint64 // default 0
	RatelimitMailfromRejects uint64 // default 0
	RatelimitRcpttoRejects   uint64 // default 0
	RatelimitAuthRejects     uint64 // default 0

	// COMMAND FILTER

	ForbidStarttls bool // default false

	// MESSAGES. Each msg_* text is what follows "<code> [<enhanced code>]
	// <proxy name> " in a reply of the proxy; the defaults are in Default.

	Locale string // default "" (leave the locale alone)

	MsgVirusFound               string
	MsgVirusNoMore              string
	MsgVirusLocked              string
	MsgSpamFound                string
	MsgUnknownVirus             string
	MsgScannerFailed            string
	MsgMalformedIp              string
	MsgCannotConnect            string
	MsgSpoolProblem             string
	MsgSpoolOpenFail            string
	MsgPipelineFull             string
	MsgLookupFailed             string
	MsgLookupNotfound           string
	MsgLookupTimeout            string
	MsgLookupMismatch           string
	MsgLookupNomem              string
	MsgLookupUnknown            string
	MsgConnectTimeout           string
	MsgConnectFailed            string
	MsgSessionTimeout           string
	MsgSignOff                  string
	MsgHello                    string
	MsgProtoError               string
	MsgTransactionFailed        string
	MsgUnimplCommand            string
	MsgTempUnavail              string
	MsgMaxReached               string
	MsgMaxPerHost               string
	MsgMaxPerIdent              string
	MsgSystemLoad               string
	MsgNomem                    string
	MsgUnknownScanner           string
	MsgAuthRequired             string
	MsgLoopAvoidance            string
	MsgSizeLimit                string
	MsgFixedXclientFail         string
	MsgDnsdbReject              string
	MsgSpfReject                string
	MsgRateReject               string
	MsgRatelimitError           string
	MsgRatelimitMessages        string
	MsgRatelimitRcptto          string
	MsgRatelimitRcpttoRejects   string
	MsgRatelimitHelo            string
	MsgRatelimitMailfrom        string
	MsgRatelimitMailfromRejects string
	MsgRatelimitDst             string
	MsgEarlytalker              string
	MsgRegexHelo                string
	MsgRegexMailFrom            string
	MsgRegexRcptTo              string

	// Warnings are what Parse took but found worth telling: text after
	// a value that was ignored, a value raised to its least. Each reads
	// "FILE:LINE: OPTION: MSG". Write ignores them.
	Warnings []string
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

// Default returns the built-in configuration: every option at its default.
//
// lock_on: the original's option table gives "any", a word its manual never
// lists, and its FAQ says spam only locks once "lock_on spam" is set. The
// default here is therefore LockVirus; the word "any" is still read, as
// every event (LockAny).
//
// Mode is ModeNone: the manual has no default mode, so Parse refuses a file
// that does not choose one.
func Default() *Config {
	return &Config{
		ProxyName:      "*",
		BindAddress:    netip.IPv4Unspecified(),
		Port:           9199,
		OutgoingAddr:   netip.IPv4Unspecified(),
		Pidfile:        "/var/run/smtp-gated/smtp-gated.pid",
		ConnectQueue:   16,
		EnfileSleep:    5,
		OnTakeoverCmds: 10,
		BufferSize:     1516,
		PipelineSize:   128,
		PidHashSize:    4096,
		HostHashSize:   4096,

		LimitCoreSize: 64 * mib,
		LimitVirtSize: 64 * mib,
		LimitDataSize: 64 * mib,
		LimitFsize:    100 * mib,

		FixedServerPort:  25,
		RemotePort:       114,
		RemoteUdpRetries: 3,

		Statefile:     "/var/run/smtp-gated/state",
		StatefilePerm: 0o660,
		StatefileType: StatefileHuman | StatefileSlots,

		LockOn:       LockVirus,
		LockDuration: 3600,
		LockPath:     "/var/spool/smtp-gated/lock",
		LockPerm:     0o660,

		SpoolPath:    "/var/spool/smtp-gated/msg",
		SpoolPerm:    0o660,
		SpoolLeaveOn: SpoolLeaveError,

		TimeoutDirect:   300,
		TimeoutLookup:   10,
		TimeoutScanner:  30,
		TimeoutSpam:     30,
		TimeoutSession:  20,
		TimeoutIdle:     300,
		TimeoutConnect:  30,
		TimeoutShutdown: 60,

		MaxConnections: 64,
		MaxPerHost:     8,
		MaxPerIdent:    4,
		MaxLoad:        2,
		ScanMaxSize:    10000000,
		SpamMaxSize:    500000,
		SpamMaxLoad:    1,
		SpamThreshold:  7,

		EmailLength: 64,
		LogLevel:    LogDebug,
		LogFacility: FacilityDaemon,

		NatHeader:     "X-Nat-Received",
		NatHeaderType: NatHeaderGeneric,
		SpoolHeader:   "X-Proxy-Spool-Info",

		AntivirusPath: "/var/run/clamav/clamd.ctl",
		AntispamPath:  "/var/run/spamd/spamd_socket",
		DspamStorage:  "/var/spool/smtp-gated/dspam",
		ScanStream:    ScanStreamAuto,

		Earlytalker: true,

		RatelimitPath:          "/var/spool/smtp-gated/ratelimit",
		RatelimitDstExpiration: -1,

		MsgVirusFound:               "Message refused: it contains a virus",
		MsgVirusNoMore:              "A virus was found; no more mail in this session, please QUIT",
		MsgVirusLocked:              "Your address is blocked after earlier virus or spam, try again later",
		MsgSpamFound:                "Message refused: it was classified as spam",
		MsgUnknownVirus:             "unidentified",
		MsgScannerFailed:            "Message could not be scanned, try again later",
		MsgMalformedIp:              "Destination lookup returned a malformed address",
		MsgCannotConnect:            "Cannot reach the mail server, try again later",
		MsgSpoolProblem:             "Cannot name a spool file, try again later",
		MsgSpoolOpenFail:            "Cannot create a spool file, try again later",
		MsgPipelineFull:             "Too many pipelined commands",
		MsgLookupFailed:             "Destination lookup failed",
		MsgLookupNotfound:           "Destination lookup found no such connection",
		MsgLookupTimeout:            "Destination lookup timed out",
		MsgLookupMismatch:           "Destination lookup gave an answer that was not understood",
		MsgLookupNomem:              "Destination lookup ran out of memory",
		MsgLookupUnknown:            "Destination lookup failed for an unknown reason",
		MsgConnectTimeout:           "Connecting to the mail server timed out, try again later",
		MsgConnectFailed:            "Connecting to the mail server failed, try again later",
		MsgSessionTimeout:           "Session timed out, closing connection",
		MsgSignOff:                  "Closing connection, goodbye",
		MsgHello:                    "Hello",
		MsgProtoError:               "Protocol error",
		MsgTransactionFailed:        "Transaction failed",
		MsgUnimplCommand:            "Command not implemented",
		MsgTempUnavail:              "Service temporarily unavailable, try again later",
		MsgMaxReached:               "Too many connections, try again later",
		MsgMaxPerHost:               "Too many connections from your address, try again later",
		MsgMaxPerIdent:              "Too many connections from your user, try again later",
		MsgSystemLoad:               "System load too high, try again later",
		MsgNomem:                    "Out of memory, try again later",
		MsgUnknownScanner:           "Scanner not configured, try again later",
		MsgAuthRequired:             "Authentication required before sending mail",
		MsgLoopAvoidance:            "Refusing to connect to myself",
		MsgSizeLimit:                "Message exceeds the size limit",
		MsgFixedXclientFail:         "Mail server refused to identify the client, try again later",
		MsgDnsdbReject:              "Your address is on a DNS blocklist",
		MsgSpfReject:                "Sender not permitted by its domain's SPF policy",
		MsgRateReject:               "Rate limit exceeded, try again later",
		MsgRatelimitError:           "Rate limit check failed, try again later",
		MsgRatelimitMessages:        "Too many messages, try again later",
		MsgRatelimitRcptto:          "Too many recipients, try again later",
		MsgRatelimitRcpttoRejects:   "Too many refused recipients, try again later",
		MsgRatelimitHelo:            "Connection rate limit exceeded, try again later",
		MsgRatelimitMailfrom:        "Sending rate limit exceeded, try again later",
		MsgRatelimitMailfromRejects: "Too many refused senders, try again later",
		MsgRatelimitDst:             "Too many connections to this server, try again later",
		MsgEarlytalker:              "Protocol violation: command sent before the greeting",
		MsgRegexHelo:                "HELO/EHLO name refused by policy",
		MsgRegexMailFrom:            "Sender address refused by policy",
		MsgRegexRcptTo:              "Recipient address refused by policy",
	}
}

// ProxyHostName returns proxy_name with every "*" replaced by the host
// name ("localhost" if the host name cannot be read).
func (c *Config) ProxyHostName() string {
	if !strings.Contains(c.ProxyName, "*") {
		return c.ProxyName
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return strings.ReplaceAll(c.ProxyName, "*", h)
}

// HostPath is p, the value of a path option, as the host names it. As in
// 1.4, when chroot_path is set every path option (pidfile, statefile,
// spool_path, lock_path, ratelimit_path, action_script, the scanners'
// sockets) names a path inside it: HostPath puts chroot_path in front.
// An empty p stays empty.
func (c *Config) HostPath(p string) string {
	if p == "" || c.ChrootPath == "" {
		return p
	}
	return filepath.Join(c.ChrootPath, p)
}

// OnHost is c as a process that does not change its root to chroot_path
// sees it: every path option as HostPath gives it (the scanners' sockets
// when they are paths), and chroot_path empty, so that HostPath of the
// result changes nothing. It is c itself when chroot_path is not set.
func (c *Config) OnHost() *Config {
	if c.ChrootPath == "" {
		return c
	}
	h := *c
	h.ChrootPath = ""
	for _, p := range []*string{&h.Pidfile, &h.ControlSocket, &h.Statefile, &h.LockPath, &h.ActionScript,
		&h.SpoolPath, &h.RatelimitPath, &h.DspamStorage} {
		*p = c.HostPath(*p)
	}
	for _, p := range []*string{&h.AntivirusPath, &h.AntispamPath} {
		if strings.HasPrefix(*p, "/") {
			*p = c.HostPath(*p)
		}
	}
	return &h
}

// ControlSocketPath returns the control socket's path on the host and
// whether it was set: control_socket when set, otherwise control.sock in
// the pidfile's directory ("" when pidfile is not set either); under
// chroot_path, as every path option, inside it.
func (c *Config) ControlSocketPath() (path string, set bool) {
	if c.ControlSocket != "" {
		return c.HostPath(c.ControlSocket), true
	}
	if c.Pidfile == "" {
		return "", false
	}
	return c.HostPath(filepath.Join(filepath.Dir(c.Pidfile), "control.sock")), false
}

// DnsblZones returns the zones of the dnsbl option, in order, without
// blanks and empty entries.
func (c *Config) DnsblZones() []string {
	var zones []string
	for z := range strings.SplitSeq(c.Dnsbl, ",") {
		if z = strings.TrimSpace(z); z != "" {
			zones = append(zones, z)
		}
	}
	return zones
}

// DNSServers returns the dns_server addresses as "host:port" (port 53
// when not given), in order, without blanks and empty entries. Entries
// are checked by Parse.
func (c *Config) DNSServers() []string {
	var out []string
	for s := range strings.SplitSeq(c.DnsServer, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap.String())
		} else if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}

// Spoofs reports whether the connection from src is relayed from the
// client's own address (TPROXY): always in mode tproxy; in mode
// tproxy,netfilter only for sources outside the private ranges of the
// manual (10/8, 172.16/12, 192.168/16, 169.254/16), whose destination
// netfilter gives instead. IPv6 clients have no private range there.
func (c *Config) Spoofs(src netip.Addr) bool {
	switch c.Mode {
	case ModeTproxy:
		return true
	case ModeTproxyNetfilter:
		return !PrivateIPv4(src)
	}
	return false
}

// PrivateIPv4 reports whether a is in one of the ranges mode
// tproxy,netfilter hands to netfilter.
func PrivateIPv4(a netip.Addr) bool {
	a = a.Unmap()
	if !a.Is4() {
		return false
	}
	for _, p := range privateV4 {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

var privateV4 = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("169.254.0.0/16"),
}
