package ipc

import (
	"fmt"
	"net/netip"
	"smtp-gated/internal/config"
)

// Version is the version of this catalogue. It is exchanged in the
// start-up handshake and in every control request; bump it on every change
// to a message number or payload, so that a master and a child built from
// different sources refuse each other instead of misreading each other.
const Version = 6

// Type is the number of one message type. Numbers are explicit and never
// reused: a reader of a packet dump, or of a log line naming a number, can
// find the message here.
type Type uint16

// The catalogue: every message any process sends to another, grouped by who
// sends it. Each line says sender → receiver, the payload type, whether a
// file descriptor rides along, and what the reply is.
const (
	// Start-up and configuration.

	// master → child, Hello, no fd; reply MsgReady (bounded wait).
	MsgHello Type = 1
	// child → master, Ready, no fd; the reply to MsgHello.
	MsgReady Type = 2
	// master → child, Config, no fd; reply MsgAck once applied.
	MsgConfig Type = 3
	// child → master, Ack, no fd; the reply to MsgConfig and other requests.
	MsgAck Type = 4
	// master → child, PeerLink, fd: one end of a socketpair to another child.
	// One way: sent at start-up and whenever the other child is restarted.
	MsgPeerLink Type = 5

	// Sessions.

	// master → session, NewSession, fd: the accepted client socket.
	// One way; the worker answers with MsgSessionEnd when the session ends.
	MsgNewSession Type = 10
	// session → master, SessionEnd, no fd. One way.
	MsgSessionEnd Type = 11
	// master → session, SessionsQuery, no fd; reply MsgSessionList: the
	// worker's live sessions, for the statefile and `smtpgatectl sessions`.
	MsgSessions Type = 14
	// session → master, SessionList, no fd; the reply to MsgSessions.
	MsgSessionList Type = 15
	// master → session, KillSession, no fd; reply MsgAck (Err "no such
	// session" when the worker does not serve it). The session ends with
	// CLOSE by=killed and its MsgSessionEnd.
	MsgKillSession Type = 16
	// session → master, SpoofQuery, no fd; reply MsgSpoofSocket. Modes
	// tproxy and tproxy,netfilter: the outgoing socket, bound to the
	// client's own address and port, needs privilege at bind time.
	MsgSpoofQuery Type = 12
	// master → session, SpoofSocket, fd: the bound, unconnected socket
	// (none when Err is set); the reply to MsgSpoofQuery.
	MsgSpoofSocket Type = 13

	// Look-ups.

	// session → lookup, DstQuery, fd: the client socket (a duplicate);
	// reply MsgDstAnswer.
	MsgDstQuery Type = 20
	// lookup → session, DstAnswer, no fd; the reply to MsgDstQuery.
	MsgDstAnswer Type = 21
	// session → lookup, DnsblQuery, no fd; reply MsgDnsblAnswer.
	MsgDnsblQuery Type = 22
	// lookup → session, DnsblAnswer, no fd; the reply to MsgDnsblQuery.
	MsgDnsblAnswer Type = 23
	// session → lookup, SpfQuery, no fd; reply MsgSpfAnswer.
	MsgSpfQuery Type = 24
	// lookup → session, SpfAnswer, no fd; the reply to MsgSpfQuery.
	MsgSpfAnswer Type = 25

	// Scanning.

	// session → scanner, Scan, fd: the spool file, opened read-only;
	// reply MsgVerdict.
	MsgScan Type = 30
	// scanner → session, Verdict, no fd; the reply to MsgScan and
	// MsgScanFinish.
	MsgVerdict Type = 31
	// session → scanner, ScanStart, fd: the spool file, opened read-only,
	// sent at the MTA's 354 when the message is streamed to clamd while it
	// arrives (scan_stream). One way: the stream ends with MsgScanFinish,
	// MsgScanAbort, or the end of the link.
	MsgScanStart Type = 32
	// session → scanner, Scan, fd: the spool file, opened read-only; reply
	// MsgVerdict. MsgScan for a message whose stream was started: the
	// virus scan finishes the stream, or scans the whole file as MsgScan
	// does when the stream is unknown or broke before the end.
	MsgScanFinish Type = 33
	// session → scanner, ScanAbort, no fd. One way: the session gave up
	// the message of a started stream (client gone, size_limit, ...).
	MsgScanAbort Type = 34

	// Control (smtpgatectl → master over the control socket).

	// smtpgatectl → master, CtlRequest, no fd; reply MsgCtlReply.
	MsgCtlRequest Type = 40
	// master → smtpgatectl, CtlReply, no fd; the reply to MsgCtlRequest.
	MsgCtlReply Type = 41

	// Locks, rate limits and the limits master keeps across workers.

	// session → lockd, Policy, no fd; reply MsgPolicyAnswer: the
	// client's lock state and its rate-limit counters, checked and
	// counted in one step (at the start of a session, at MAIL, RCPT and
	// AUTH, and before the final dot).
	MsgPolicy Type = 50
	// lockd → session, PolicyAnswer, no fd; the reply to MsgPolicy,
	// sent once every change it made is written.
	MsgPolicyAnswer Type = 51
	// session or master → lockd, Found, no fd; reply MsgAck once the lock
	// file (if lock_on wants one) exists; Err says why none could be
	// made. lockd runs action_script on its own time.
	MsgFound Type = 52
	// session → master, IdentQuery, no fd; reply MsgIdentAnswer: the
	// session's ident, counted for max_per_ident.
	MsgIdentQuery Type = 53
	// master → session, IdentAnswer, no fd; the reply to MsgIdentQuery.
	MsgIdentAnswer Type = 54
	// master → lockd, LockdCtl, no fd; reply MsgLockdReply: a control
	// command for lockd (locks, lock, unlock, ratelimit), whose caller
	// master has already checked.
	MsgLockdCtl Type = 55
	// lockd → master, CtlReply, no fd; the reply to MsgLockdCtl, which
	// master passes on to smtpgatectl.
	MsgLockdReply Type = 56

	// What master knows of a session, for lockd, which acts only for
	// sessions master registered to the worker that asks (trust.go).

	// master → lockd, SessionOpen, no fd. One way: session ID was handed
	// to a worker; sent again when master learns the session's ident.
	MsgSessionOpen Type = 57
	// master → lockd, SessionClosed, no fd. One way: session ID is over.
	MsgSessionClosed Type = 58
	// lockd → master, SessionAsk, no fd; reply MsgSessionInfo: master's
	// record of a session lockd does not know, or that a worker's request
	// disagrees with.
	MsgSessionAsk Type = 59
	// master → lockd, SessionInfo, no fd; the reply to MsgSessionAsk.
	MsgSessionInfo Type = 60
	// lockd → master, Breach, no fd. One way: a session worker broke the
	// rules; master kills and restarts it.
	MsgBreach Type = 61

	// Session workers' health and the hand-off of sessions.

	// master → session, Ping, no fd; reply MsgPong. Sent every second: a
	// worker that has not answered for 2 s gets no new sessions, one
	// silent for 10 s is killed and restarted.
	MsgPing Type = 62
	// session → master, Pong, no fd; the reply to MsgPing.
	MsgPong Type = 63
	// session → master, SessionTaken, no fd. One way: the worker took the
	// client socket of MsgNewSession ID. Until then master keeps its own
	// copy, to hand the session to another worker if this one never
	// takes it.
	MsgSessionTaken Type = 64

	// lockd's answers a session worker may keep.

	// lockd → session, PolicyGen, fd: a sealed memfd (Linux) whose first
	// eight bytes are lockd's generation, which lockd changes before it
	// acknowledges anything that could turn an unlocked client into a
	// locked one, and the next eight its heartbeat (CLOCK_MONOTONIC).
	// One way, once per link; the worker maps it read-only and keeps
	// lockd's "not locked" answers for as long as the generation stays
	// the same and the heartbeat is fresh (session/lockcache.go). Not
	// sent where there is no memfd: a worker without it asks every time.
	MsgPolicyGen Type = 65
)

// spec says what a message type may carry.
type spec struct {
	name string
	fds  int // number of descriptors that must ride along
	new  func() any
}

// optionalFDs lists the types whose descriptors may also be absent: a
// reply that carries a descriptor on success and an error text otherwise.
var optionalFDs = map[Type]bool{MsgSpoofSocket: true}

var catalogue = map[Type]spec{
	MsgHello:       {"HELLO", 0, func() any { return new(Hello) }},
	MsgReady:       {"READY", 0, func() any { return new(Ready) }},
	MsgConfig:      {"CONFIG", 0, func() any { return new(Config) }},
	MsgAck:         {"ACK", 0, func() any { return new(Ack) }},
	MsgPeerLink:    {"PEER_LINK", 1, func() any { return new(PeerLink) }},
	MsgNewSession:  {"NEW_SESSION", 1, func() any { return new(NewSession) }},
	MsgSessionEnd:  {"SESSION_END", 0, func() any { return new(SessionEnd) }},
	MsgSessions:    {"SESSIONS", 0, func() any { return new(SessionsQuery) }},
	MsgSessionList: {"SESSION_LIST", 0, func() any { return new(SessionList) }},
	MsgKillSession: {"KILL_SESSION", 0, func() any { return new(KillSession) }},
	MsgSpoofQuery:  {"SPOOF_QUERY", 0, func() any { return new(SpoofQuery) }},
	MsgSpoofSocket: {"SPOOF_SOCKET", 1, func() any { return new(SpoofSocket) }},
	MsgDstQuery:    {"DST_QUERY", 1, func() any { return new(DstQuery) }},
	MsgDstAnswer:   {"DST_ANSWER", 0, func() any { return new(DstAnswer) }},
	MsgDnsblQuery:  {"DNSBL_QUERY", 0, func() any { return new(DnsblQuery) }},
	MsgDnsblAnswer: {"DNSBL_ANSWER", 0, func() any { return new(DnsblAnswer) }},
	MsgSpfQuery:    {"SPF_QUERY", 0, func() any { return new(SpfQuery) }},
	MsgSpfAnswer:   {"SPF_ANSWER", 0, func() any { return new(SpfAnswer) }},
	MsgScan:        {"SCAN", 1, func() any { return new(Scan) }},
	MsgVerdict:     {"VERDICT", 0, func() any { return new(Verdict) }},
	MsgScanStart:   {"SCAN_START", 1, func() any { return new(ScanStart) }},
	MsgScanFinish:  {"SCAN_FINISH", 1, func() any { return new(Scan) }},
	MsgScanAbort:   {"SCAN_ABORT", 0, func() any { return new(ScanAbort) }},
	MsgCtlRequest:  {"CTL_REQUEST", 0, func() any { return new(CtlRequest) }},
	MsgCtlReply:    {"CTL_REPLY", 0, func() any { return new(CtlReply) }},

	MsgPolicy:       {"POLICY", 0, func() any { return new(Policy) }},
	MsgPolicyAnswer: {"POLICY_ANSWER", 0, func() any { return new(PolicyAnswer) }},
	MsgFound:        {"FOUND", 0, func() any { return new(Found) }},
	MsgIdentQuery:   {"IDENT_QUERY", 0, func() any { return new(IdentQuery) }},
	MsgIdentAnswer:  {"IDENT_ANSWER", 0, func() any { return new(IdentAnswer) }},
	MsgLockdCtl:     {"LOCKD_CTL", 0, func() any { return new(LockdCtl) }},
	MsgLockdReply:   {"LOCKD_REPLY", 0, func() any { return new(CtlReply) }},

	MsgSessionOpen:   {"SESSION_OPEN", 0, func() any { return new(SessionOpen) }},
	MsgSessionClosed: {"SESSION_CLOSED", 0, func() any { return new(SessionClosed) }},
	MsgSessionAsk:    {"SESSION_ASK", 0, func() any { return new(SessionAsk) }},
	MsgSessionInfo:   {"SESSION_INFO", 0, func() any { return new(SessionInfo) }},
	MsgBreach:        {"BREACH", 0, func() any { return new(Breach) }},
	MsgPing:          {"PING", 0, func() any { return new(Ping) }},
	MsgPong:          {"PONG", 0, func() any { return new(Pong) }},
	MsgSessionTaken:  {"SESSION_TAKEN", 0, func() any { return new(SessionTaken) }},
	MsgPolicyGen:     {"POLICY_GEN", 1, func() any { return new(PolicyGen) }},
}

func (t Type) String() string {
	if s, ok := catalogue[t]; ok {
		return s.name
	}
	return fmt.Sprintf("UNKNOWN(%d)", uint16(t))
}

// Known reports whether t is in the catalogue.
func (t Type) Known() bool { _, ok := catalogue[t]; return ok }

// Role names, as used on the command line of a re-executed child and in
// Hello.
const (
	RoleSession = "session"
	RoleLookup  = "lookup"
	RoleScanner = "scanner"
	RoleLockd   = "lockd"
)

// Hello is the first message a child receives: who it is and the
// configuration in the file's own syntax (the child parses it again).
type Hello struct {
	Version    int    `msgpack:"version"`
	Role       string `msgpack:"role"`
	Index      int    `msgpack:"index"`
	Config     string `msgpack:"config"`
	Foreground bool   `msgpack:"foreground"`
	// Started is the master's start time (unix seconds); session ids are
	// unique per master start.
	Started int64 `msgpack:"started"`
	// EmptyDir is a root-owned empty directory, for roles that chroot
	// when chroot_path is not set.
	EmptyDir string `msgpack:"empty_dir"`
}

// Ready tells master a child has dropped its privileges and serves.
type Ready struct {
	Version int `msgpack:"version"`
	Pid     int `msgpack:"pid"`
}

// Config carries a reloaded configuration in the file's own syntax.
type Config struct {
	Config string `msgpack:"config"`
}

// Ack answers a request that has no other result. Err is empty on success.
type Ack struct {
	Err string `msgpack:"err"`
}

// PeerLink hands a child its end of a socketpair to another child.
type PeerLink struct {
	Role  string `msgpack:"role"`
	Index int    `msgpack:"index"`
}

// NewSession hands an accepted connection to a session worker.
type NewSession struct {
	ID     uint64         `msgpack:"id"`
	Client netip.AddrPort `msgpack:"client"`
	Local  netip.AddrPort `msgpack:"local"`
	// Accepted is when master accepted it, unix nanoseconds.
	Accepted int64 `msgpack:"accepted"`
	// Count is the number of connections open when this one was
	// accepted (all workers), and HostCount those from its source.
	Count     int `msgpack:"count"`
	HostCount int `msgpack:"host_count"`
}

// SessionEnd tells master a session is over.
type SessionEnd struct {
	ID uint64 `msgpack:"id"`
	// By is the cause, as in the CLOSE log line (client, server, idle, ...).
	By        CloseCause `msgpack:"by"`
	ClientRx  uint64     `msgpack:"client_rx"`
	ServerRx  uint64     `msgpack:"server_rx"`
	Direct    bool       `msgpack:"direct"`
	Empty     bool       `msgpack:"empty"`
	Transacts int        `msgpack:"transactions"`
	// Spam is the number of messages the scanner found spam, whether
	// refused or passed (lock_on without spam); at most Transacts.
	Spam int `msgpack:"spam"`
	// Auth is the auth= field of the CLOSE line (1 the MTA offers AUTH,
	// 2 the client authenticated, 4 an authentication failed).
	Auth int `msgpack:"auth"`
	// Events are the Event* bits of what happened in the session, for
	// the counters of the status file: each counts once per session.
	Events uint32 `msgpack:"events"`
}

// Bits of SessionEnd.Events.
const (
	EventNoAuth    uint32 = 1 << iota // MAIL FROM refused by auth_require
	EventSPF                          // a sender refused by SPF
	EventRegex                        // a command refused by a regex_* option
	EventEarlytalk                    // the client spoke before the greeting
	EventPipeline                     // a command refused because the pipeline was full
	EventRatelimit                    // a command refused by a rate limit
	EventsAll      = EventNoAuth | EventSPF | EventRegex | EventEarlytalk | EventPipeline | EventRatelimit
)

// SessionsQuery asks a session worker for its live sessions. IDs, when
// not empty, limits the answer to those sessions.
type SessionsQuery struct {
	IDs []uint64 `msgpack:"ids"`
}

// SessionRow is what a worker knows of one live session, for the status
// table.
type SessionRow struct {
	ID     uint64         `msgpack:"id"`
	State  SessionState   `msgpack:"state"`
	Target netip.AddrPort `msgpack:"target"`
	Ident  string         `msgpack:"ident"`
	// Transaction is the number of the current transaction (MAIL FROM
	// accepted so far); Auth the auth flags of the CLOSE line.
	Transaction int    `msgpack:"transaction"`
	Auth        int    `msgpack:"auth"`
	ClientRx    uint64 `msgpack:"client_rx"`
	ServerRx    uint64 `msgpack:"server_rx"`
}

// SessionList is a worker's answer to SessionsQuery.
type SessionList struct {
	Rows []SessionRow `msgpack:"rows"`
}

// KillSession asks a worker to end one session now.
type KillSession struct {
	ID uint64 `msgpack:"id"`
}

// DstQuery asks where a connection was going. The client socket rides
// along, for modes that ask the kernel about it.
type DstQuery struct {
	Client netip.AddrPort `msgpack:"client"`
	Local  netip.AddrPort `msgpack:"local"`
}

// DstAnswer is the original destination, or why it is unknown.
// Fail is one of the Lookup* failure kinds; empty on success.
type DstAnswer struct {
	Dst   netip.AddrPort `msgpack:"dst"`
	Ident string         `msgpack:"ident"`
	Fail  string         `msgpack:"fail"`
	Err   string         `msgpack:"err"`
}

// Failure kinds of a look-up; each maps to one msg_lookup_* text.
const (
	LookupFailed   = "failed"
	LookupNotFound = "notfound"
	LookupTimeout  = "timeout"
	LookupMismatch = "mismatch"
	LookupLoop     = "loop"
	// LookupMalformed: a remote helper gave an address that is not
	// one (msg_malformed_ip).
	LookupMalformed = "malformed"
)

// SpoofQuery asks master for the outgoing socket of session ID (modes
// tproxy, tproxy,netfilter): a TCP socket with SO_REUSEADDR and
// IP_TRANSPARENT, bound to Client, the session's own client address and
// port (master refuses any other). The session connects it.
type SpoofQuery struct {
	ID     uint64         `msgpack:"id"`
	Client netip.AddrPort `msgpack:"client"`
}

// SpoofSocket answers SpoofQuery: the socket rides along, or Err says why
// there is none.
type SpoofSocket struct {
	Err string `msgpack:"err"`
}

// DnsblQuery asks whether Addr is listed in any dnsbl zone. Zones are
// queried in parallel, within timeout_lookup. ID is the session, for the
// lookup process's log lines.
type DnsblQuery struct {
	ID   uint64     `msgpack:"id"`
	Addr netip.Addr `msgpack:"addr"`
}

// DnsblAnswer: Zone is the first zone, in the order of the configuration,
// that lists the address; empty when none does. Errors (NXDOMAIN aside)
// count as not listed and are described in Err.
type DnsblAnswer struct {
	Zone   string `msgpack:"zone"`
	Answer string `msgpack:"answer"` // the A record the zone gave, e.g. 127.0.0.2
	Err    string `msgpack:"err"`
}

// SpfQuery asks for the SPF result of IP sending as Sender (the MAIL FROM
// address, empty for the null sender) after HELO/EHLO Helo.
type SpfQuery struct {
	ID     uint64     `msgpack:"id"`
	IP     netip.Addr `msgpack:"ip"`
	Helo   string     `msgpack:"helo"`
	Sender string     `msgpack:"sender"`
}

// SpfAnswer is the result: none, neutral, pass, fail, softfail,
// temperror or permerror (RFC 7208 names); Err the library's reason.
type SpfAnswer struct {
	Result string `msgpack:"result"`
	Err    string `msgpack:"err"`
}

// Scan asks for the verdict on one message. The spool file rides along
// (read from offset 0; its first line is the spool header). Size is the
// message's size in bytes as the client sent it (after dot-unstuffing).
type Scan struct {
	SessionID   uint64         `msgpack:"session"`
	Transaction int            `msgpack:"transaction"`
	Size        int64          `msgpack:"size"`
	Client      netip.AddrPort `msgpack:"client"`
	// Skip names the scans the session does not want (auth_skip for an
	// authenticated client): "antivir", "antispam".
	Skip []string `msgpack:"skip"`
}

// ScanStart starts a stream: the scanner feeds the spool file that rides
// along to clamd (INSTREAM) as the session writes it, so that at the final
// dot only the tail is left to send. SessionID and Transaction name the
// stream on its link (a session has one message in DATA at a time); the
// MsgScanFinish or MsgScanAbort for the same pair ends it.
type ScanStart struct {
	SessionID   uint64         `msgpack:"session"`
	Transaction int            `msgpack:"transaction"`
	Client      netip.AddrPort `msgpack:"client"`
}

// ScanAbort drops the stream of SessionID's Transaction: the message will
// not be scanned.
type ScanAbort struct {
	SessionID   uint64 `msgpack:"session"`
	Transaction int    `msgpack:"transaction"`
}

// Verdict is the scanner's answer. Name is the virus name; Score the spam
// score (set whenever spam scanning ran); Scanned lists what ran
// ("clamd", "spamd", ...), for the log.
type Verdict struct {
	Kind    VerdictKind `msgpack:"kind"`
	Name    string      `msgpack:"name"`
	Score   float64     `msgpack:"score"`
	Scanned []string    `msgpack:"scanned"`
	Err     string      `msgpack:"err"`
}

// CtlRequest is one smtpgatectl command.
type CtlRequest struct {
	Version int      `msgpack:"version"`
	Command string   `msgpack:"command"`
	Args    []string `msgpack:"args"`
}

// CtlReply answers a control command. Code is the exit status the client
// should use (0 success); Text is printed as is.
type CtlReply struct {
	Code CtlStatus `msgpack:"code"`
	Text string    `msgpack:"text"`
}

// Rate-limit counters, named as their ratelimit_* options
// (ratelimit_sessions counts messages).
const (
	RateConnections     = "connections"
	RateMessages        = "messages"
	RateRecipients      = "recipients"
	RateBytes           = "bytes"
	RateMailfromRejects = "mailfrom_rejects"
	RateRcpttoRejects   = "rcptto_rejects"
	RateAuthRejects     = "auth_rejects"
)

// Delta changes one rate-limit counter by N, unconditionally: bytes sent,
// a rejection the MTA gave, or -1 for a message or recipient counted at
// MAIL or RCPT that the MTA then refused.
type Delta struct {
	Name string `msgpack:"name"`
	N    int64  `msgpack:"n"`
}

// Policy asks lockd about client Client (and Ident, in the remote
// modes). In this order, under one lock per client address:
//   - Lock: is the client locked? If so nothing is counted.
//   - Add: the deltas are applied.
//   - Check and Take: every counter named must be below its quota (0: no
//     quota); if one is not, it is named in Over and nothing is taken;
//     otherwise each counter in Take is counted by one.
//
// Add, Check and Take are ignored while ratelimit_period is 0.
type Policy struct {
	ID     uint64         `msgpack:"id"` // the session, for log lines
	Client netip.AddrPort `msgpack:"client"`
	Ident  string         `msgpack:"ident"`
	Lock   bool           `msgpack:"lock"`
	Add    []Delta        `msgpack:"add"`
	Check  []string       `msgpack:"check"`
	Take   []string       `msgpack:"take"`
}

// PolicyAnswer: Locked with the lock's Cause, or Over naming the first
// counter at its quota, or neither. Err: lockd could not tell (a lock or
// rate-limit file it could not read or write); the session answers 4xx.
type PolicyAnswer struct {
	Locked bool   `msgpack:"locked"`
	Cause  string `msgpack:"cause"`
	Over   string `msgpack:"over"`
	Err    string `msgpack:"err"`
}

// Found reports an event of lock_on (Event is its word: virus, spam,
// maxhost, maxident, dnsbl, spf, regex, earlytalker, ratelimit) with what
// the session knew, which becomes action_script's environment. Fields
// not known are zero.
type Found struct {
	Event  config.LockOn  `msgpack:"event"`
	ID     uint64         `msgpack:"id"`
	Client netip.AddrPort `msgpack:"client"`
	Local  netip.AddrPort `msgpack:"local"`
	Target netip.AddrPort `msgpack:"target"`
	Ident  string         `msgpack:"ident"`
	// IdentCount is the number of sessions from Client and Ident.
	IdentCount int `msgpack:"ident_count"`
	// Detail is the virus name, the DNSBL zone, the refused address or
	// name, the rate-limit counter: what the event was about.
	Detail string `msgpack:"detail"`
	// Command is the SMTP command a regex event refused (HELO, EHLO,
	// MAIL or RCPT): action_script's FOUND names it.
	Command     string  `msgpack:"command"`
	SpamScore   float64 `msgpack:"spam_score"`
	Helo        string  `msgpack:"helo"`
	MailFrom    string  `msgpack:"mail_from"`
	Rcpts       int     `msgpack:"rcpts"` // recipients accepted in the session
	Size        int64   `msgpack:"size"`
	Transaction int     `msgpack:"transaction"`
	Auth        int     `msgpack:"auth"`  // the auth flags of the CLOSE line
	Spool       string  `msgpack:"spool"` // the spool file's path
	// Start is when the session started, unix seconds.
	Start int64 `msgpack:"start"`
}

// IdentQuery tells master the ident the lookup process found for session
// ID.
type IdentQuery struct {
	ID    uint64 `msgpack:"id"`
	Ident string `msgpack:"ident"`
}

// IdentAnswer: Count is the number of sessions from the same address and
// ident, this one included. Over: max_per_ident is reached, the session
// was not counted and must be refused. Err: master does not know the
// session (it ended meanwhile).
type IdentAnswer struct {
	Count int    `msgpack:"count"`
	Over  bool   `msgpack:"over"`
	Err   string `msgpack:"err"`
}

// LockdCtl is a control command for lockd, as smtpgatectl gave it; UID is
// the caller's, for the log.
type LockdCtl struct {
	Command string   `msgpack:"command"`
	Args    []string `msgpack:"args"`
	UID     int      `msgpack:"uid"`
}

// Ping asks a session worker whether it still serves its link to master.
type Ping struct{}

// Pong answers Ping.
type Pong struct{}

// PolicyGen hands a session worker lockd's generation page (MsgPolicyGen).
// Size is the page's size in bytes; the generation is the native-endian
// uint64 at its start, 0 while answers must not be kept at all; the
// heartbeat the int64 after it.
type PolicyGen struct {
	Size int `msgpack:"size"`
}

// SessionTaken tells master that the worker took session ID's client
// socket.
type SessionTaken struct {
	ID uint64 `msgpack:"id"`
}
