package ipc

import (
	"fmt"
	"net/netip"
)

// Version is the version of this catalogue. It is exchanged in the
// start-up handshake and in every control request; bump it on every change
// to a message number or payload, so that a master and a child built from
// different sources refuse each other instead of misreading each other.
const Version = 2

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

	// Look-ups.

	// session → lookup, DstQuery, fd: the client socket (a duplicate);
	// reply MsgDstAnswer.
	MsgDstQuery Type = 20
	// lookup → session, DstAnswer, no fd; the reply to MsgDstQuery.
	MsgDstAnswer Type = 21

	// Scanning.

	// session → scanner, Scan, fd: the spool file, opened read-only;
	// reply MsgVerdict.
	MsgScan Type = 30
	// scanner → session, Verdict, no fd; the reply to MsgScan.
	MsgVerdict Type = 31

	// Control (smtpgatectl → master over the control socket).

	// smtpgatectl → master, CtlRequest, no fd; reply MsgCtlReply.
	MsgCtlRequest Type = 40
	// master → smtpgatectl, CtlReply, no fd; the reply to MsgCtlRequest.
	MsgCtlReply Type = 41
)

// spec says what a message type may carry.
type spec struct {
	name string
	fds  int // number of descriptors that must ride along
	new  func() any
}

var catalogue = map[Type]spec{
	MsgHello:      {"HELLO", 0, func() any { return new(Hello) }},
	MsgReady:      {"READY", 0, func() any { return new(Ready) }},
	MsgConfig:     {"CONFIG", 0, func() any { return new(Config) }},
	MsgAck:        {"ACK", 0, func() any { return new(Ack) }},
	MsgPeerLink:   {"PEER_LINK", 1, func() any { return new(PeerLink) }},
	MsgNewSession: {"NEW_SESSION", 1, func() any { return new(NewSession) }},
	MsgSessionEnd: {"SESSION_END", 0, func() any { return new(SessionEnd) }},
	MsgDstQuery:   {"DST_QUERY", 1, func() any { return new(DstQuery) }},
	MsgDstAnswer:  {"DST_ANSWER", 0, func() any { return new(DstAnswer) }},
	MsgScan:       {"SCAN", 1, func() any { return new(Scan) }},
	MsgVerdict:    {"VERDICT", 0, func() any { return new(Verdict) }},
	MsgCtlRequest: {"CTL_REQUEST", 0, func() any { return new(CtlRequest) }},
	MsgCtlReply:   {"CTL_REPLY", 0, func() any { return new(CtlReply) }},
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
	By        string `msgpack:"by"`
	ClientRx  uint64 `msgpack:"client_rx"`
	ServerRx  uint64 `msgpack:"server_rx"`
	Direct    bool   `msgpack:"direct"`
	Empty     bool   `msgpack:"empty"`
	Transacts int    `msgpack:"transactions"`
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
)

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

// Verdict kinds.
const (
	VerdictClean = "clean"
	VerdictVirus = "virus"
	VerdictSpam  = "spam"
	// VerdictError: a scanner failed; Err says why. The session answers
	// 451 unless ignore_errors.
	VerdictError = "error"
)

// Verdict is the scanner's answer. Name is the virus name; Score the spam
// score (set whenever spam scanning ran); Scanned lists what ran
// ("clamd", "spamd", ...), for the log.
type Verdict struct {
	Kind    string   `msgpack:"kind"`
	Name    string   `msgpack:"name"`
	Score   float64  `msgpack:"score"`
	Scanned []string `msgpack:"scanned"`
	Err     string   `msgpack:"err"`
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
	Code int    `msgpack:"code"`
	Text string `msgpack:"text"`
}
