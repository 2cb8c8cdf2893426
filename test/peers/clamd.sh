#!/usr/bin/env bash
# clamd.sh - a private clamd for the tests, with an offline signature database.
#
# Usage: test/peers/clamd.sh start DIR PORT
#        test/peers/clamd.sh stop DIR
#        test/peers/clamd.sh status DIR
# (start saves PORT in DIR/port; a later start may omit it.)
#
# Everything lives under DIR: clamd.conf, the database DIR/db, the unix socket
# DIR/clamd.sock (mode 666), the pid file, DIR/clamd.log. clamd also listens
# on 127.0.0.1:PORT. It runs as user clamav, loads no official database
# (none is installed offline) and knows two signatures, written here:
#   - the EICAR test file, anywhere in a file (.ndb) and as the exact 68-byte
#     file (.hdb); EICAR is kept base64-encoded so that this script is not
#     itself flagged by scanners;
#   - the marker string SMTPGATED-TEST-MALWARE-MARKER-0001 (.ndb), for a
#     second, distinct virus name.
# Names from a custom database are reported with ".UNOFFICIAL" appended:
# tests must not hard-code them.
# "ready ..." is printed once clamd answers PONG on both the unix socket and
# the TCP port. `stop` returns once the process is gone and the socket removed.
# Must run as root (clamd changes to user clamav).
set -euo pipefail
umask 022
export LC_ALL=C
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

CMD=${1:-}
D=${2:-}
PORT=${3:-}
EICAR_B64='WDVPIVAlQEFQWzRcUFpYNTQoUF4pN0NDKTd9JEVJQ0FSLVNUQU5EQVJELUFOVElWSVJVUy1URVNULUZJTEUhJEgrSCo='
MARKER='SMTPGATED-TEST-MALWARE-MARKER-0001'

say() { printf '[clamd] %s\n' "$*"; }
die() { printf '[clamd] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,6p' "$0" >&2; exit 2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

[ -n "$CMD" ] && [ -n "$D" ] || usage
case "$D" in /*) ;; *) D=$PWD/$D ;; esac
if [ -z "$PORT" ] && [ -s "$D/port" ]; then PORT=$(<"$D/port"); fi
if [ "$CMD" = start ] && [ -z "$PORT" ]; then usage; fi
case "$PORT" in *[!0-9]*) die "PORT must be a number: $PORT" ;; esac
SOCK=$D/clamd.sock
PIDF=$D/clamd.pid

# A pid is alive if /proc has it and it is not a zombie (PID 1 may reap late).
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
clamd_pid() {
	local p
	[ -s "$PIDF" ] || return 1
	p=$(tr -dc '0-9' <"$PIDF")
	alive "$p" || return 1
	# pid reuse: only trust it if it is a clamd with our configuration
	case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" in *clamd*"$D/clamd.conf"*) echo "$p" ;; *) return 1 ;; esac
}
port_busy() {
	[ -n "$PORT" ] || return 1
	[ -n "$(ss -ltnH "sport = :$PORT" 2>/dev/null)" ]
}
# ping ADDR: zPING over the unix socket (a path) or TCP (host:port), want PONG.
# perl is Essential in Debian (perl-base carries IO::Socket).
ping() {
	[ "$(timeout 5 perl -MIO::Socket::UNIX -MIO::Socket::INET -e '
		my $a = shift;
		my $s = $a =~ m{^/} ? IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $a)
		                    : IO::Socket::INET->new(PeerAddr => $a, Timeout => 3);
		$s or exit 2; binmode $s; print $s "zPING\0"; shutdown($s, 1);
		local $/; my $r = <$s> // ""; $r =~ s/\0//g; print $r;' "$1" 2>/dev/null)" = PONG ]
}
both_ping() { ping "$SOCK" && ping "127.0.0.1:$PORT"; }
wait_for() {
	local secs=$1 end
	shift
	end=$(($(now_ms) + secs * 1000))
	until "$@" >/dev/null 2>&1; do
		[ "$(now_ms)" -lt "$end" ] || return 1
		sleep 0.02
	done
}

write_conf() {
	mkdir -p "$D/db" "$D/tmp"
	# clamd (user clamav) must traverse DIR: mktemp -d makes it 0700.
	chmod 755 "$D"
	local ehex mhex
	ehex=$(printf %s "$EICAR_B64" | base64 -d | od -An -tx1 -v | tr -d ' \n')
	mhex=$(printf %s "$MARKER" | od -An -tx1 -v | tr -d ' \n')
	# .ndb = Name:TargetType:Offset:HexSig (type 0 = any file, * = any offset)
	printf 'SmtpGated.Test.Eicar:0:*:%s\nSmtpGated.Test.Marker:0:*:%s\n' "$ehex" "$mhex" >"$D/db/test.ndb"
	# .hdb = md5:size:Name (the exact 68-byte EICAR file)
	printf '%s:68:SmtpGated.Test.EicarFile\n' "$(printf %s "$EICAR_B64" | base64 -d | md5sum | cut -d' ' -f1)" >"$D/db/test.hdb"
	cat >"$D/clamd.conf" <<EOF
# Written by test/peers/clamd.sh for $D; regenerated on every start.
LocalSocket $SOCK
LocalSocketMode 666
FixStaleSocket yes
TCPSocket $PORT
TCPAddr 127.0.0.1
User clamav
Foreground yes
PidFile $PIDF
LogFile $D/clamd.log
# A scan that ends early (a client gone mid-stream, clamd stopped) can
# leave its temporary file behind: here it goes with DIR.
TemporaryDirectory $D/tmp
LogTime yes
DatabaseDirectory $D/db
OfficialDatabaseOnly no
Bytecode no
SelfCheck 0
ScanMail yes
ScanArchive yes
MaxThreads 10
StreamMaxLength 60M
MaxScanSize 100M
MaxFileSize 60M
ExtendedDetectionInfo yes
EOF
	echo "$PORT" >"$D/port"
	chown -R clamav:clamav "$D"
}

start() {
	local p t0
	[ "$(id -u)" = 0 ] || die "must run as root"
	command -v clamd >/dev/null || die "clamd is not installed (clamav-daemon; test/install-deps.sh)"
	if p=$(clamd_pid); then
		wait_for 30 both_ping || die "running (pid $p) but no PONG"
		say "ready $SOCK 127.0.0.1:$PORT pid=$p (already running)"
		return 0
	fi
	port_busy && die "port $PORT is already in use by something else"
	t0=$(now_ms)
	write_conf
	rm -f "$PIDF"
	# Foreground, detached by setsid, rather than clamd's own daemon mode:
	# there the parent waits for a signal from its child that, on a loaded
	# machine, sometimes never comes (ClamAV 1.4.6: the parent then hangs
	# in wait() for good while the child serves).
	setsid clamd -c "$D/clamd.conf" </dev/null >>"$D/clamd.stdout" 2>&1 &
	p=$!
	wait_for 60 eval 'both_ping || ! alive "$p"' || die "no PONG from clamd within 60 s, see $D/clamd.log: $(tail -5 "$D/clamd.log" 2>/dev/null)"
	alive "$p" || die "clamd exited: $(tail -5 "$D/clamd.stdout" 2>/dev/null) $(tail -5 "$D/clamd.log" 2>/dev/null)"
	wait_for 10 clamd_pid || die "clamd (pid $p) wrote no pid file"
	say "ready $SOCK 127.0.0.1:$PORT pid=$p in $(($(now_ms) - t0)) ms"
}

stop() {
	local p i
	if ! p=$(clamd_pid); then
		rm -f "$SOCK"
		say "not running"
		return 0
	fi
	kill -TERM "$p" 2>/dev/null || true
	for i in $(seq 1 500); do
		alive "$p" || break
		sleep 0.02
	done
	if alive "$p"; then
		say "pid $p still alive after 10 s, sending KILL"
		kill -KILL "$p" 2>/dev/null || true
		wait_for 5 eval '! alive "$p"' || die "pid $p survives KILL"
	fi
	wait_for 10 eval '! port_busy' || die "port $PORT still in use after stop"
	rm -f "$SOCK" "$PIDF"
	say "stopped (pid $p)"
}

status() {
	local p
	if p=$(clamd_pid) && both_ping; then
		say "running: pid $p, $SOCK, 127.0.0.1:$PORT"
	else
		say "not running"
		return 1
	fi
}

case "$CMD" in
start) start ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
