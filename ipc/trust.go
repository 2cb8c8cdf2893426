package ipc

import (
	"fmt"
	"net/netip"

	"github.com/vmihailenco/msgpack/v5"
)

// CloseCause is what ended a session: the by= field of its CLOSE line and
// SessionEnd.By. Only the values below cross processes: decoding any other
// is a protocol error, so that a session worker cannot make master keep
// (and print) strings of its own.
type CloseCause string

// The causes, as smtp-gated(8) lists them under LOGGING.
const (
	CloseQuit        CloseCause = "quit"        // QUIT and the MTA's 221
	CloseClient      CloseCause = "client"      // the client closed the connection
	CloseServer      CloseCause = "server"      // the MTA closed the connection
	CloseIdle        CloseCause = "idle"        // timeout_idle, timeout_direct
	CloseConnect     CloseCause = "connect"     // the MTA could not be reached
	CloseLookup      CloseCause = "lookup"      // the destination was not found
	CloseLoop        CloseCause = "loop"        // the destination is the proxy itself
	CloseMaxconn     CloseCause = "maxconn"     // max_connections (master)
	CloseMaxhost     CloseCause = "maxhost"     // max_per_host (master)
	CloseMaxident    CloseCause = "maxident"    // max_per_ident
	CloseLoad        CloseCause = "load"        // max_load (master)
	CloseUnavailable CloseCause = "unavailable" // no session worker ready (master)
	CloseShutdown    CloseCause = "shutdown"    // the daemon is stopping (master)
	CloseHandoff     CloseCause = "handoff"     // the worker could not be given the connection (master)
	CloseCrash       CloseCause = "crash"       // the worker died (master)
	CloseEarlytalker CloseCause = "earlytalker" // the client spoke before the greeting
	CloseVirus       CloseCause = "virus"
	CloseSpam        CloseCause = "spam"
	CloseSize        CloseCause = "size"      // size_limit
	CloseScanner     CloseCause = "scanner"   // no verdict
	CloseSpool       CloseCause = "spool"     // the spool file could not be written
	CloseXclient     CloseCause = "xclient"   // the MTA refused XCLIENT
	CloseLock        CloseCause = "lock"      // the client is locked
	CloseLockd       CloseCause = "lockd"     // lockd could not tell
	CloseRatelimit   CloseCause = "ratelimit" // a connections rate limit
	CloseDnsbl       CloseCause = "dnsbl"     // listed in a dnsbl zone
	CloseRegex       CloseCause = "regex"     // a regex_* option refused HELO, MAIL or RCPT
	CloseSpf         CloseCause = "spf"       // SPF refused MAIL FROM
	CloseKilled      CloseCause = "killed"    // smtpgatectl kill
	CloseError       CloseCause = "error"     // ended before any cause was known
)

var closeCauses = map[CloseCause]bool{
	CloseQuit: true, CloseClient: true, CloseServer: true, CloseIdle: true, CloseConnect: true,
	CloseLookup: true, CloseLoop: true, CloseMaxconn: true, CloseMaxhost: true, CloseMaxident: true,
	CloseLoad: true, CloseUnavailable: true, CloseShutdown: true, CloseHandoff: true, CloseCrash: true,
	CloseEarlytalker: true, CloseVirus: true, CloseSpam: true, CloseSize: true, CloseScanner: true,
	CloseSpool: true, CloseXclient: true, CloseLock: true, CloseLockd: true, CloseRatelimit: true,
	CloseDnsbl: true, CloseRegex: true, CloseSpf: true, CloseKilled: true, CloseError: true,
}

// Valid reports whether c is one of the catalogue's causes.
func (c CloseCause) Valid() bool { return closeCauses[c] }

// CloseCauses lists every cause.
func CloseCauses() []CloseCause {
	out := make([]CloseCause, 0, len(closeCauses))
	for c := range closeCauses {
		out = append(out, c)
	}
	return out
}

// DecodeMsgpack refuses a cause that is not in the catalogue.
func (c *CloseCause) DecodeMsgpack(dec *msgpack.Decoder) (err error) {
	*c, err = decodeWord(dec, "close cause", CloseCause.Valid)
	return err
}

// SessionState is the state of a live session as its worker reports it for
// the status file and `smtpgatectl sessions` (smtp-gated(8), STATUS
// FILE). Decoding a value not listed here is a protocol error.
type SessionState string

// The states, in the order a session goes through them.
const (
	StateStart    SessionState = "start"    // handed over by master, nothing done yet
	StateIdent    SessionState = "ident"    // asking the lookup process for the destination
	StateConnect  SessionState = "connect"  // connecting to the MTA
	StatePre      SessionState = "pre"      // waiting for the MTA's greeting
	StateHelo     SessionState = "helo"     // in the SMTP dialogue
	StateData     SessionState = "data"     // receiving a message
	StateScan     SessionState = "scan"     // waiting for the scanner's verdict
	StatePost     SessionState = "post"     // the final dot released, waiting for the MTA
	StateRset     SessionState = "rset"     // after RSET
	StateQuit     SessionState = "quit"     // after QUIT
	StateDirect   SessionState = "direct"   // direct proxy
	StateTakeover SessionState = "takeover" // the proxy talks to the client alone
	StateDnsdb    SessionState = "dnsdb"    // asking the DNSBL zones
	StateSpf      SessionState = "spf"      // asking SPF about MAIL FROM
)

// StateUnknown is what master shows for a session whose worker did not
// answer; it never crosses processes.
const StateUnknown SessionState = "?"

var sessionStates = map[SessionState]bool{
	StateStart: true, StateIdent: true, StateConnect: true, StatePre: true, StateHelo: true,
	StateData: true, StateScan: true, StatePost: true, StateRset: true, StateQuit: true,
	StateDirect: true, StateTakeover: true, StateDnsdb: true, StateSpf: true,
}

// Valid reports whether s is one of the catalogue's states.
func (s SessionState) Valid() bool { return sessionStates[s] }

// DecodeMsgpack refuses a state that is not in the catalogue.
func (s *SessionState) DecodeMsgpack(dec *msgpack.Decoder) (err error) {
	*s, err = decodeWord(dec, "session state", SessionState.Valid)
	return err
}

// decodeWord reads a value of a closed list of words: one that valid
// refuses is an error naming what it was to be.
func decodeWord[T ~string](dec *msgpack.Decoder, what string, valid func(T) bool) (T, error) {
	s, err := dec.DecodeString()
	if err != nil {
		return "", err
	}
	if !valid(T(s)) {
		return "", fmt.Errorf("unknown %s %q", what, clipQuote(s))
	}
	return T(s), nil
}

// clipQuote shortens a refused value for an error message.
func clipQuote(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// SessionOpen tells lockd that master handed session ID to session worker
// Worker (its index), for client Client. Master sends it again, with
// Ident, when it learns the session's ident (IdentQuery).
type SessionOpen struct {
	ID     uint64         `msgpack:"id"`
	Worker int            `msgpack:"worker"`
	Client netip.AddrPort `msgpack:"client"`
	Local  netip.AddrPort `msgpack:"local"`
	Ident  string         `msgpack:"ident"`
}

// SessionClosed tells lockd that session ID is over.
type SessionClosed struct {
	ID uint64 `msgpack:"id"`
}

// SessionAsk asks master about a session lockd does not know (yet), or
// whose record disagrees with a worker's request.
type SessionAsk struct {
	ID uint64 `msgpack:"id"`
}

// SessionInfo is master's record of a session: Known false when master
// has none (the session ended, or never was).
type SessionInfo struct {
	Known  bool           `msgpack:"known"`
	Worker int            `msgpack:"worker"`
	Client netip.AddrPort `msgpack:"client"`
	Local  netip.AddrPort `msgpack:"local"`
	Ident  string         `msgpack:"ident"`
}

// Breach tells master that session worker Worker broke a rule of the
// protocol with lockd (a request about a session it does not serve, a
// client that is not the session's, a delta no SMTP event gives): master
// kills and restarts it. ID is the session the request named.
type Breach struct {
	Worker int    `msgpack:"worker"`
	ID     uint64 `msgpack:"id"`
	Rule   string `msgpack:"rule"`
}

// VerdictKind is what a scan found. Only the values below cross
// processes: decoding any other is a protocol error.
type VerdictKind string

// Verdict kinds.
const (
	VerdictClean VerdictKind = "clean"
	VerdictVirus VerdictKind = "virus"
	VerdictSpam  VerdictKind = "spam"
	// VerdictError: a scanner failed; Err says why. The session answers
	// 451 unless ignore_errors.
	VerdictError VerdictKind = "error"
)

// DecodeMsgpack refuses a kind that is not one of the above.
func (k *VerdictKind) DecodeMsgpack(dec *msgpack.Decoder) (err error) {
	*k, err = decodeWord(dec, "verdict kind", VerdictKind.Valid)
	return err
}

// Valid reports whether k is one of the kinds above.
func (k VerdictKind) Valid() bool {
	switch k {
	case VerdictClean, VerdictVirus, VerdictSpam, VerdictError:
		return true
	}
	return false
}
