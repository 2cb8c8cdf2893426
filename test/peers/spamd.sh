#!/usr/bin/env bash
# spamd.sh - a private SpamAssassin spamd for the tests, offline.
#
# Usage: test/peers/spamd.sh start DIR PORT
#        test/peers/spamd.sh stop DIR
#        test/peers/spamd.sh status DIR
# (start saves PORT in DIR/port; a later start may omit it.)
#
# Everything lives under DIR: the site configuration DIR/site (the .pre files
# of /etc/spamassassin and a local.cf: no Bayes, no auto-whitelist, no network
# tests, required_score 5.0), spamd's home DIR/home, DIR/spamd.log, the pid
# file. spamd listens on 127.0.0.1:PORT and on the unix socket DIR/spamd.sock
# (mode 666), runs as debian-spamd, with -L (local tests only) and
# --allowed-ips=127.0.0.1. The rules are those shipped in the Debian package
# (/usr/share/spamassassin): GTUBE scores 1000 and more, offline.
# "ready ..." is printed once spamd answers PONG on both. `stop` returns once
# spamd and all its children are gone and PORT is free.
# Must run as root (spamd changes to user debian-spamd).
set -euo pipefail
umask 022
export LC_ALL=C
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

CMD=${1:-}
D=${2:-}
PORT=${3:-}
RUNAS=debian-spamd

say() { printf '[spamd] %s\n' "$*"; }
die() { printf '[spamd] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,6p' "$0" >&2; exit 2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

[ -n "$CMD" ] && [ -n "$D" ] || usage
case "$D" in /*) ;; *) D=$PWD/$D ;; esac
if [ -z "$PORT" ] && [ -s "$D/port" ]; then PORT=$(<"$D/port"); fi
if [ "$CMD" = start ] && [ -z "$PORT" ]; then usage; fi
case "$PORT" in *[!0-9]*) die "PORT must be a number: $PORT" ;; esac
SOCK=$D/spamd.sock
PIDF=$D/spamd.pid

alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
spamd_pid() {
	local p
	[ -s "$PIDF" ] || return 1
	p=$(tr -dc '0-9' <"$PIDF")
	alive "$p" || return 1
	case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" in *spamd*) echo "$p" ;; *) return 1 ;; esac
}
# Live members of a process group (spamd -d calls setsid: its children share
# the parent's group).
pgrp_members() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } |
		awk -v g="$1" '{ pid = $1; sub(/^.*\) /, ""); if ($3 == g && $1 != "Z") print pid }'
}
port_busy() {
	[ -n "$PORT" ] || return 1
	[ -n "$(ss -ltnH "sport = :$PORT" 2>/dev/null)" ]
}
# ping ADDR: "PING SPAMC/1.5" over TCP (host:port) or the unix socket (a path).
ping() {
	timeout 5 perl -MIO::Socket::UNIX -MIO::Socket::INET -e '
		my $a = shift;
		my $s = $a =~ m{^/} ? IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $a)
		                    : IO::Socket::INET->new(PeerAddr => $a, Timeout => 3);
		$s or exit 2; binmode $s; print $s "PING SPAMC/1.5\r\n\r\n"; shutdown($s, 1);
		local $/; my $r = <$s> // ""; exit($r =~ /^SPAMD\/\S+ 0 PONG/ ? 0 : 1);' "$1" 2>/dev/null
}
both_ping() { ping "127.0.0.1:$PORT" && ping "$SOCK"; }
wait_for() {
	local secs=$1 end
	shift
	end=$(($(now_ms) + secs * 1000))
	until "$@" >/dev/null 2>&1; do
		[ "$(now_ms)" -lt "$end" ] || return 1
		sleep 0.05
	done
}

write_conf() {
	mkdir -p "$D/site" "$D/home"
	chmod 755 "$D"
	# The .pre files load the plugins the stock rules need; the rules come
	# from /usr/share/spamassassin (no sa-update, no network).
	cp /etc/spamassassin/*.pre "$D/site/"
	cat >"$D/site/local.cf" <<'EOF'
use_bayes 0
bayes_auto_learn 0
use_auto_whitelist 0
skip_rbl_checks 1
dns_available no
required_score 5.0
report_safe 0
EOF
	echo "$PORT" >"$D/port"
	chown -R "$RUNAS:$RUNAS" "$D"
}

start() {
	local p t0
	[ "$(id -u)" = 0 ] || die "must run as root"
	command -v spamd >/dev/null || die "spamd is not installed (spamd, spamassassin; test/install-deps.sh)"
	if p=$(spamd_pid); then
		wait_for 120 both_ping || die "running (pid $p) but no PONG"
		say "ready 127.0.0.1:$PORT $SOCK pid=$p (already running)"
		return 0
	fi
	port_busy && die "port $PORT is already in use by something else"
	t0=$(now_ms)
	write_conf
	rm -f "$PIDF" "$SOCK"
	spamd -d -L -x -4 -u "$RUNAS" -g "$RUNAS" \
		--listen="127.0.0.1:$PORT" --listen="$SOCK" --socketmode=0666 \
		--allowed-ips=127.0.0.1 --siteconfigpath="$D/site" -H "$D/home" \
		-s "$D/spamd.log" -r "$PIDF" \
		--max-children=5 --min-children=1 --min-spare=1 --max-spare=2 \
		</dev/null >>"$D/spamd.stdout" 2>&1 ||
		die "spamd failed: $(tail -5 "$D/spamd.stdout" 2>/dev/null) $(tail -5 "$D/spamd.log" 2>/dev/null)"
	wait_for 120 both_ping || die "no PONG from spamd, see $D/spamd.log: $(tail -5 "$D/spamd.log" 2>/dev/null)"
	p=$(spamd_pid) || die "spamd pid file missing"
	say "ready 127.0.0.1:$PORT $SOCK pid=$p in $(($(now_ms) - t0)) ms"
}

stop() {
	local p i
	if ! p=$(spamd_pid); then
		say "not running"
		return 0
	fi
	# spamd's TERM handler stops its children, then exits; wait for the whole
	# process group (spamd -d is a session leader).
	kill -TERM "$p" 2>/dev/null || true
	for i in $(seq 1 500); do
		[ -z "$(pgrp_members "$p")" ] && break
		sleep 0.02
	done
	if [ -n "$(pgrp_members "$p")" ]; then
		say "process group $p still alive after 10 s, sending KILL"
		kill -KILL -- "-$p" 2>/dev/null || true
		wait_for 5 eval '[ -z "$(pgrp_members "$p")" ]' || die "process group $p survives KILL"
	fi
	wait_for 10 eval '! port_busy' || die "port $PORT still in use after stop"
	rm -f "$SOCK" "$PIDF"
	say "stopped (pid $p)"
}

status() {
	local p
	if p=$(spamd_pid) && both_ping; then
		say "running: pid $p, 127.0.0.1:$PORT, $SOCK"
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
