package config

import (
	"fmt"
	"strings"
)

// This file holds the enumerated option types. An ENUM ONE option is a
// named int type with one constant per value and String(); an ENUM MULTI
// option is a named uint32 bit set with Has() and String(). The words each
// type reads and prints are in the enumDef beside it.

// enumWord is one value of an enumeration.
type enumWord struct {
	name string // the word Write prints
	val  uint32 // the Go constant (a bit for MULTI)
	num  int    // the original's number for this value (a bit for MULTI), which also selects it; -1 = none
}

// enumDef describes the words of one enumerated type.
type enumDef struct {
	words   []enumWord          // in the manual's order
	aliases map[string]string   // other accepted word → canonical word
	multi   bool                // comma-separated bit set
	empty   string              // MULTI: word for the empty set ("never", "off", "none"); "" = empty not allowed
	all     string              // MULTI: word for every bit ("any" for lock_on); "" = none
	reject  map[string]string   // word → why it is refused
	hidden  string              // ONE: a word read but not offered in messages (mode none)
	anyNum  bool                // MULTI: any number is taken, bits without a word dropped (log_mail_from)
	numFix  func(uint32) uint32 // MULTI: adjusts the bits a number gave (statefile_type: human unless flat)
}

// accepted lists the words for an error message.
func (d *enumDef) accepted() string {
	names := make([]string, 0, len(d.words)+1)
	for _, w := range d.words {
		if w.name == d.hidden {
			continue // mode none: read, but not a choice to offer
		}
		names = append(names, w.name)
	}
	if d.empty != "" {
		names = append(names, d.empty)
	}
	s := strings.Join(names, ", ")
	if d.multi {
		s += " (comma-separated)"
	}
	return s
}

// name returns the word printed for v of a ONE enumeration.
func (d *enumDef) name(v uint32, typ string) string {
	for _, w := range d.words {
		if w.val == v {
			return w.name
		}
	}
	return fmt.Sprintf("%s(%d)", typ, v)
}

// format returns the comma-separated words of a MULTI bit set.
func (d *enumDef) format(v uint32) string {
	if v == 0 {
		return d.empty
	}
	var names []string
	for _, w := range d.words {
		if v&w.val != 0 {
			names = append(names, w.name)
			v &^= w.val
		}
	}
	if v != 0 {
		names = append(names, fmt.Sprintf("0x%x", v))
	}
	return strings.Join(names, ",")
}

// allBits is the union of every bit of a MULTI set.
func (d *enumDef) allBits() uint32 {
	var b uint32
	for _, w := range d.words {
		b |= w.val
	}
	return b
}

// hasBits implements Has for every bit set type: every bit of f is in s,
// and Has of the empty word (never/off/none) reports an empty set.
func hasBits(s, f uint32) bool {
	if f == 0 {
		return s == 0
	}
	return s&f == f
}

// Mode is the mode option: how the proxy finds where a connection was
// going.
type Mode int

// Values of Mode. ModeNone (unset) is refused by Parse. A number given in
// the file selects the value the original gave that number (fixed 1,
// fixed+xclient 2, remote 5, remote-udp 6, getsockname 7, netfilter 8,
// ipfw 9, ipfilter 10, tproxy 11, tproxy,netfilter 12, pf 13; 0 is none).
const (
	ModeNone            Mode = iota // not set
	ModeFixed                       // fixed
	ModeFixedXclient                // fixed+xclient
	ModeRemote                      // remote
	ModeRemoteUDP                   // remote-udp
	ModeGetsockname                 // getsockname
	ModeNetfilter                   // netfilter
	ModeTproxy                      // tproxy
	ModeTproxyNetfilter             // tproxy,netfilter
	ModeIpfw                        // ipfw
	ModeIpfilter                    // ipfilter
	ModePf                          // pf
)

var modeDef = &enumDef{hidden: "none", words: []enumWord{
	{"none", uint32(ModeNone), 0},
	{"fixed", uint32(ModeFixed), 1},
	{"fixed+xclient", uint32(ModeFixedXclient), 2},
	{"remote", uint32(ModeRemote), 5},
	{"remote-udp", uint32(ModeRemoteUDP), 6},
	{"getsockname", uint32(ModeGetsockname), 7},
	{"netfilter", uint32(ModeNetfilter), 8},
	{"tproxy", uint32(ModeTproxy), 11},
	{"tproxy,netfilter", uint32(ModeTproxyNetfilter), 12},
	{"ipfw", uint32(ModeIpfw), 9},
	{"ipfilter", uint32(ModeIpfilter), 10},
	{"pf", uint32(ModePf), 13},
}}

func (m Mode) String() string { return modeDef.name(uint32(m), "Mode") }

// Fixed reports whether the mode sends every connection to fixed_server.
func (m Mode) Fixed() bool { return m == ModeFixed || m == ModeFixedXclient }

// Remote reports whether the mode asks a remote helper (remote, remote-udp).
func (m Mode) Remote() bool { return m == ModeRemote || m == ModeRemoteUDP }

// Transparent reports whether the listening socket accepts connections
// to any address (IP_TRANSPARENT: tproxy, tproxy,netfilter).
func (m Mode) Transparent() bool { return m == ModeTproxy || m == ModeTproxyNetfilter }

// NATDevice returns the device master opens for the mode's look-ups
// (pf, ipfilter), "" for the others.
func (m Mode) NATDevice() string {
	switch m {
	case ModePf:
		return "/dev/pf"
	case ModeIpfilter:
		return "/dev/ipnat"
	}
	return ""
}

// LocalIsDestination reports whether the local address of a client's
// connection is its original destination, as the kernel delivered it
// unchanged (getsockname, ipfw, tproxy, tproxy,netfilter).
func (m Mode) LocalIsDestination() bool {
	switch m {
	case ModeGetsockname, ModeIpfw, ModeTproxy, ModeTproxyNetfilter:
		return true
	}
	return false
}

// KernelNAT reports whether the mode reads the original destination
// from a packet filter of the kernel (the original's USE_NAT modes).
func (m Mode) KernelNAT() bool {
	switch m {
	case ModeNetfilter, ModeTproxy, ModeIpfw, ModeIpfilter, ModePf:
		return true
	}
	return false
}

// StatefileType is the statefile_type bit set.
type StatefileType uint32

// Bits of StatefileType.
const (
	StatefileHuman StatefileType = 1 << iota // human
	StatefileFlat                            // flat
	StatefileSlots                           // slots
)

// The original's numbers: human 0 (no flat bit), flat 2, slots 4.
var statefileTypeDef = &enumDef{multi: true,
	numFix: func(v uint32) uint32 {
		if v&uint32(StatefileFlat) == 0 {
			v |= uint32(StatefileHuman)
		}
		return v
	},
	words: []enumWord{
		{"human", uint32(StatefileHuman), 0},
		{"flat", uint32(StatefileFlat), 2},
		{"slots", uint32(StatefileSlots), 4},
	}}

// Has reports whether every bit of f is set.
func (s StatefileType) Has(f StatefileType) bool { return hasBits(uint32(s), uint32(f)) }

func (s StatefileType) String() string { return statefileTypeDef.format(uint32(s)) }

// LockOn is the lock_on bit set: the events that lock a client.
type LockOn uint32

// Bits of LockOn. LockNever is the empty set: test it with s == LockNever
// or s.Has(LockNever). LockAny ("any" in the file) is every event.
const (
	LockVirus       LockOn = 1 << iota // virus
	LockSpam                           // spam
	LockMaxHost                        // maxhost
	LockMaxIdent                       // maxident
	LockDNSBL                          // dnsbl
	LockSPF                            // spf
	LockRegex                          // regex
	LockEarlytalker                    // earlytalker (alias earlytalk)
	LockRatelimit                      // ratelimit

	LockNever LockOn = 0 // never
	LockAny   LockOn = LockVirus | LockSpam | LockMaxHost | LockMaxIdent | LockDNSBL |
		LockSPF | LockRegex | LockEarlytalker | LockRatelimit // any
)

var lockOnDef = &enumDef{multi: true, empty: "never", all: "any",
	aliases: map[string]string{"earlytalk": "earlytalker"},
	words: []enumWord{
		{"virus", uint32(LockVirus), 0x1},
		{"spam", uint32(LockSpam), 0x2},
		{"maxhost", uint32(LockMaxHost), 0x10},
		{"maxident", uint32(LockMaxIdent), 0x20},
		{"dnsbl", uint32(LockDNSBL), 0x100},
		{"spf", uint32(LockSPF), 0x400},
		{"regex", uint32(LockRegex), 0x200},
		{"earlytalker", uint32(LockEarlytalker), 0x800},
		{"ratelimit", uint32(LockRatelimit), 0x1000},
	}}

// Has reports whether every bit of f is set (Has(LockNever): none is).
func (s LockOn) Has(f LockOn) bool { return hasBits(uint32(s), uint32(f)) }

func (s LockOn) String() string { return lockOnDef.format(uint32(s)) }

// SpoolLeaveOn is the spool_leave_on bit set: when a spool file is kept.
type SpoolLeaveOn uint32

// Bits of SpoolLeaveOn. SpoolLeaveNever is the empty set (always delete).
const (
	SpoolLeaveError  SpoolLeaveOn = 1 << iota // error
	SpoolLeaveSpam                            // spam
	SpoolLeaveVirus                           // virus
	SpoolLeaveAlways                          // always

	SpoolLeaveNever SpoolLeaveOn = 0 // never
)

var spoolLeaveOnDef = &enumDef{multi: true, empty: "never", words: []enumWord{
	{"error", uint32(SpoolLeaveError), 1},
	{"spam", uint32(SpoolLeaveSpam), 2},
	{"virus", uint32(SpoolLeaveVirus), 4},
	{"always", uint32(SpoolLeaveAlways), 8},
}}

// Has reports whether every bit of f is set (Has(SpoolLeaveNever): none is).
func (s SpoolLeaveOn) Has(f SpoolLeaveOn) bool { return hasBits(uint32(s), uint32(f)) }

func (s SpoolLeaveOn) String() string { return spoolLeaveOnDef.format(uint32(s)) }

// LogAddr is the bit set of log_mail_from and log_rcpt_to.
type LogAddr uint32

// Bits of LogAddr. LogAddrOff is the empty set (aliases no, none).
const (
	LogAddrAccepted LogAddr = 1 << iota // accepted
	LogAddrRejected                     // rejected
	LogAddrBase64                       // base64

	LogAddrOff LogAddr = 0 // off
)

var logAddrDef = &enumDef{multi: true, empty: "off", anyNum: true,
	aliases: map[string]string{"no": "off", "none": "off"},
	words: []enumWord{
		{"accepted", uint32(LogAddrAccepted), 1},
		{"rejected", uint32(LogAddrRejected), 2},
		{"base64", uint32(LogAddrBase64), 4},
	}}

// Has reports whether every bit of f is set (Has(LogAddrOff): none is).
func (s LogAddr) Has(f LogAddr) bool { return hasBits(uint32(s), uint32(f)) }

func (s LogAddr) String() string { return logAddrDef.format(uint32(s)) }

// AuthRequire is the auth_require option.
type AuthRequire int

// Values of AuthRequire (numbers 0, 1, 2 in the file).
const (
	AuthNo          AuthRequire = iota // no
	AuthIfSupported                    // ifsupported
	AuthMandatory                      // mandatory
)

var authRequireDef = &enumDef{words: []enumWord{
	{"no", uint32(AuthNo), 0},
	{"ifsupported", uint32(AuthIfSupported), 1},
	{"mandatory", uint32(AuthMandatory), 2},
}}

func (a AuthRequire) String() string { return authRequireDef.name(uint32(a), "AuthRequire") }

// AuthSkip is the auth_skip bit set: checks skipped for authenticated
// sessions.
type AuthSkip uint32

// Bits of AuthSkip. AuthSkipNone is the empty set.
const (
	AuthSkipDirect   AuthSkip = 1 << iota // direct
	AuthSkipAntivir                       // antivir
	AuthSkipAntispam                      // antispam
	AuthSkipDNSBL                         // dnsbl
	AuthSkipRegex                         // regex

	AuthSkipNone AuthSkip = 0 // none
)

var authSkipDef = &enumDef{multi: true, empty: "none", words: []enumWord{
	{"direct", uint32(AuthSkipDirect), 0x10},
	{"antivir", uint32(AuthSkipAntivir), 0x1},
	{"antispam", uint32(AuthSkipAntispam), 0x2},
	{"dnsbl", uint32(AuthSkipDNSBL), 0x8},
	{"regex", uint32(AuthSkipRegex), 0x4},
}}

// Has reports whether every bit of f is set (Has(AuthSkipNone): none is).
func (s AuthSkip) Has(f AuthSkip) bool { return hasBits(uint32(s), uint32(f)) }

func (s AuthSkip) String() string { return authSkipDef.format(uint32(s)) }

// LogLevel is the log_level option. Its values are the syslog(3)
// priorities (LOG_EMERG = 0 ... LOG_DEBUG = 7), and a number in the file is
// that priority: log_level 7 = debug.
type LogLevel int

// Values of LogLevel.
const (
	LogEmerg   LogLevel = iota // emerg
	LogAlert                   // alert
	LogCrit                    // crit
	LogErr                     // err
	LogWarning                 // warning
	LogNotice                  // notice
	LogInfo                    // info
	LogDebug                   // debug
)

var logLevelDef = &enumDef{words: []enumWord{
	{"debug", uint32(LogDebug), 7},
	{"info", uint32(LogInfo), 6},
	{"notice", uint32(LogNotice), 5},
	{"warning", uint32(LogWarning), 4},
	{"err", uint32(LogErr), 3},
	{"crit", uint32(LogCrit), 2},
	{"alert", uint32(LogAlert), 1},
	{"emerg", uint32(LogEmerg), 0},
}}

func (l LogLevel) String() string { return logLevelDef.name(uint32(l), "LogLevel") }

// Facility is the log_facility option. Its values are the syslog facility
// numbers (user = 1, mail = 2, daemon = 3, auth = 4, news = 7,
// authpriv = 10, local0..local7 = 16..23). A number in the file is the
// original's, the encoded syslog value (user 8, mail 16, daemon 24, ...,
// local7 184): the facility number times 8.
type Facility int

// Values of Facility.
const (
	FacilityUser     Facility = 1  // user
	FacilityMail     Facility = 2  // mail
	FacilityDaemon   Facility = 3  // daemon
	FacilityAuth     Facility = 4  // auth
	FacilityNews     Facility = 7  // news
	FacilityAuthpriv Facility = 10 // authpriv
	FacilityLocal0   Facility = 16 // local0
	FacilityLocal1   Facility = 17 // local1
	FacilityLocal2   Facility = 18 // local2
	FacilityLocal3   Facility = 19 // local3
	FacilityLocal4   Facility = 20 // local4
	FacilityLocal5   Facility = 21 // local5
	FacilityLocal6   Facility = 22 // local6
	FacilityLocal7   Facility = 23 // local7
)

var facilityDef = &enumDef{words: []enumWord{
	{"user", uint32(FacilityUser), 8},
	{"mail", uint32(FacilityMail), 16},
	{"daemon", uint32(FacilityDaemon), 24},
	{"auth", uint32(FacilityAuth), 32},
	{"news", uint32(FacilityNews), 56},
	{"authpriv", uint32(FacilityAuthpriv), 80},
	{"local0", uint32(FacilityLocal0), 128},
	{"local1", uint32(FacilityLocal1), 136},
	{"local2", uint32(FacilityLocal2), 144},
	{"local3", uint32(FacilityLocal3), 152},
	{"local4", uint32(FacilityLocal4), 160},
	{"local5", uint32(FacilityLocal5), 168},
	{"local6", uint32(FacilityLocal6), 176},
	{"local7", uint32(FacilityLocal7), 184},
}}

func (f Facility) String() string { return facilityDef.name(uint32(f), "Facility") }

// Syslog returns the facility shifted into place, as the LOG_* facility
// macros of <syslog.h> and log/syslog's Priority have it (daemon = 3<<3 =
// 24): OR it with a LogLevel to get a syslog priority. int(f) is the plain
// facility number.
func (f Facility) Syslog() int { return int(f) << 3 }

// NatHeaderType is the nat_header_type option.
type NatHeaderType int

// Values of NatHeaderType (numbers 0, 1, 2 in the file). NatHeaderGeneric
// is printed "simple", the manual's word; "generic" is accepted too.
const (
	NatHeaderNone    NatHeaderType = iota // none
	NatHeaderGeneric                      // simple (alias generic)
	NatHeaderIPOnly                       // ip-only
)

var natHeaderTypeDef = &enumDef{
	aliases: map[string]string{"generic": "simple"},
	words: []enumWord{
		{"none", uint32(NatHeaderNone), 0},
		{"simple", uint32(NatHeaderGeneric), 1},
		{"ip-only", uint32(NatHeaderIPOnly), 2},
	}}

func (n NatHeaderType) String() string { return natHeaderTypeDef.name(uint32(n), "NatHeaderType") }

// AntivirusType is the antivirus_type option.
type AntivirusType int

// Values of AntivirusType (the original's numbers 0, 3, 4 in the file).
const (
	AntivirusOff   AntivirusType = iota // off (alias none)
	AntivirusClamd                      // clamd
	AntivirusMksd                       // mksd
)

var antivirusTypeDef = &enumDef{
	aliases: map[string]string{"none": "off"},
	words: []enumWord{
		{"off", uint32(AntivirusOff), 0},
		{"clamd", uint32(AntivirusClamd), 3},
		{"mksd", uint32(AntivirusMksd), 4},
	}}

func (a AntivirusType) String() string { return antivirusTypeDef.name(uint32(a), "AntivirusType") }

// ScanStream is the scan_stream option (added by this project): whether a
// message goes to clamd while it arrives (INSTREAM, fed from the spool
// file) rather than all at once after the final dot.
type ScanStream int

// Values of ScanStream.
const (
	ScanStreamNo   ScanStream = iota // no: FILDES or INSTREAM after the dot
	ScanStreamYes                    // yes: stream over either transport
	ScanStreamAuto                   // auto: stream when antivirus_path is TCP
)

var scanStreamDef = &enumDef{
	aliases: map[string]string{"off": "no", "false": "no", "on": "yes", "true": "yes"},
	words: []enumWord{
		{"no", uint32(ScanStreamNo), 0},
		{"yes", uint32(ScanStreamYes), 1},
		{"auto", uint32(ScanStreamAuto), 2},
	}}

func (s ScanStream) String() string { return scanStreamDef.name(uint32(s), "ScanStream") }

// AntispamType is the antispam_type option. The original's libdspam is not
// supported by this build: Parse refuses it.
type AntispamType int

// Values of AntispamType (the original's numbers 0, 3 in the file; 4,
// libdspam, is refused).
const (
	AntispamOff          AntispamType = iota // off (alias none)
	AntispamSpamassassin                     // spamassassin
)

const libdspamRefusal = "libdspam is not supported in this build; use spamassassin (spamd) instead"

var antispamTypeDef = &enumDef{
	aliases: map[string]string{"none": "off"},
	reject:  map[string]string{"libdspam": libdspamRefusal, "4": libdspamRefusal},
	words: []enumWord{
		{"off", uint32(AntispamOff), 0},
		{"spamassassin", uint32(AntispamSpamassassin), 3},
	}}

func (a AntispamType) String() string { return antispamTypeDef.name(uint32(a), "AntispamType") }

// SPFMode is the spf option.
type SPFMode int

// Values of SPFMode (numbers 0..3 in the file). SPFOff is printed "none",
// the manual's word; "off" is accepted too, and so is "source", the name of
// incoming before 1.4.16.
const (
	SPFOff      SPFMode = iota // none (alias off)
	SPFIncoming                // incoming (alias source)
	SPFOutgoing                // outgoing
	SPFFixed                   // fixed
)

var spfModeDef = &enumDef{
	aliases: map[string]string{"off": "none", "source": "incoming"},
	words: []enumWord{
		{"none", uint32(SPFOff), 0},
		{"incoming", uint32(SPFIncoming), 1},
		{"outgoing", uint32(SPFOutgoing), 2},
		{"fixed", uint32(SPFFixed), 3},
	}}

func (s SPFMode) String() string { return spfModeDef.name(uint32(s), "SPFMode") }
