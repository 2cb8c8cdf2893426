#!/usr/bin/env bash
# postfix.sh - a private Postfix for the end-to-end tests, on loopback.
#
# Usage: test/peers/postfix.sh start DIR PORT
#        test/peers/postfix.sh stop DIR [PORT]
#        test/peers/postfix.sh status DIR [PORT]
# (PORT may be omitted when DIR was started before: start saves it in DIR/port.)
#
# Everything lives under DIR (config, queue, data, TLS key, log, Maildir), so
# several instances with different DIR and PORT run side by side; nothing in
# /etc/postfix is read or written. The instance:
#   - listens on 127.0.0.1:PORT, and on [::1]:PORT when the machine has IPv6
#     loopback;
#   - accepts any recipient in any domain and delivers everything into one
#     catch-all Maildir, DIR/maildir/sink/ (new/ holds the messages);
#   - except the test rules: reject@... gets 550 5.1.1, tempfail@... gets 450 4.2.0
#     at RCPT, and anything @discard.invalid is accepted and discarded;
#   - offers STARTTLS (self-signed certificate in DIR/tls/cert.pem) and
#     AUTH PLAIN LOGIN (sasldb) for testuser@peers.localdomain / testpass;
#   - allows XCLIENT and XFORWARD from 127.0.0.0/8 (and ::1);
#   - message_size_limit 52428800 (50 MB);
#   - logs to DIR/maillog.
# "ready ..." is printed only once the 220 banner answers on every address.
# `stop` returns once the master and all its children are gone and PORT is free.
# Must run as root (postfix master, and the sasldb/maildir ownership).
set -euo pipefail
umask 022
export LC_ALL=C
# postfix, saslpasswd2 and runuser live in sbin, which not every PATH has.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

CMD=${1:-}
D=${2:-}
PORT=${3:-}
SASL_USER=testuser
SASL_PASS=testpass
HOSTNAME_FQ=peers.localdomain

say() { printf '[postfix] %s\n' "$*"; }
die() { printf '[postfix] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,7p' "$0" >&2; exit 2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

[ -n "$CMD" ] && [ -n "$D" ] || usage
case "$D" in /*) ;; *) D=$PWD/$D ;; esac
PC=$D/etc       # config_directory
Q=$D/queue      # queue_directory (master.pid is Q/pid/master.pid)
MD=$D/maildir   # virtual_mailbox_base; the sink is MD/sink/
# stop and status may omit PORT: start saved it in DIR/port.
if [ -z "$PORT" ] && [ -s "$D/port" ]; then PORT=$(<"$D/port"); fi
if [ "$CMD" = start ] && [ -z "$PORT" ]; then usage; fi
case "$PORT" in *[!0-9]*) die "PORT must be a number: $PORT" ;; esac

# IPv6 loopback present? (lo carries ::1 unless IPv6 is disabled)
has_ipv6_lo() { [ -r /proc/net/if_inet6 ] && grep -q '^00000000000000000000000000000001 ' /proc/net/if_inet6; }
ADDRS=(127.0.0.1)
if has_ipv6_lo; then ADDRS+=(::1); fi

# A pid is alive if /proc has it and it is not a zombie: the daemonized master's
# parent is PID 1, which on some machines (containers, VMs with a minimal init)
# reaps late, so a dead master can linger as a zombie.
alive() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
master_pid() {
	local p
	[ -s "$Q/pid/master.pid" ] || return 1
	p=$(tr -dc '0-9' <"$Q/pid/master.pid")
	alive "$p" || return 1
	# pid reuse: only trust it if it is a postfix master
	case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" in *master*) echo "$p" ;; *) return 1 ;; esac
}
# Live (non-zombie) members of a process group. The master calls setsid(), so
# its pgid is its pid and all its children (smtpd, qmgr, ...) share it.
# (cat, not awk on the glob: a process may vanish between the glob and the read.)
pgrp_members() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } |
		awk -v g="$1" '{ pid = $1; sub(/^.*\) /, ""); if ($3 == g && $1 != "Z") print pid }'
}
port_busy() {
	[ -n "$PORT" ] || return 1 # unknown: a start that failed before choosing it
	if command -v ss >/dev/null; then
		# no `| grep -q`: with pipefail, grep exiting early SIGPIPEs ss
		[ -n "$(ss -ltnH "sport = :$PORT" 2>/dev/null)" ]
	else
		local a
		for a in "${ADDRS[@]}"; do (exec 3<>"/dev/tcp/$a/$PORT") 2>/dev/null && return 0; done
		return 1
	fi
}
# banner_ok ADDR: a 220 greeting within 5 s (bash /dev/tcp: no perl, nc or swaks needed).
banner_ok() {
	(
		exec 3<>"/dev/tcp/$1/$PORT" || exit 1
		IFS= read -r -t 5 line <&3 || exit 1
		printf 'QUIT\r\n' >&3 || true
		[[ $line == 220* ]]
	) 2>/dev/null
}
all_banners_ok() {
	local a
	for a in "${ADDRS[@]}"; do banner_ok "$a" || return 1; done
}
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
	mkdir -p "$PC/sasl" "$D/tls" "$Q" "$D/data" "$MD/sink"
	# Every directory on the way must be traversable by the postfix user (queue)
	# and by nobody (the virtual delivery agent writes the Maildir as 65534):
	# mktemp -d and Go's os.MkdirTemp make 0700 directories.
	chmod 755 "$D" "$MD"
	chown postfix "$D/data"
	chown -R nobody:nogroup "$MD"
	runuser -u nobody -- test -w "$MD/sink" || die "$MD/sink is not writable by nobody (check the modes of DIR's parents)"
	if [ ! -s "$D/tls/cert.pem" ]; then
		# EC P-256: generated in milliseconds, unlike RSA 2048 (up to ~0.5 s)
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
			-subj "/CN=$HOSTNAME_FQ" \
			-addext "subjectAltName=DNS:$HOSTNAME_FQ,DNS:localhost,IP:127.0.0.1,IP:::1" \
			-keyout "$D/tls/key.pem" -out "$D/tls/cert.pem" 2>/dev/null || die "openssl failed"
		chmod 600 "$D/tls/key.pem"
	fi
	local protos=ipv4 ifaces=127.0.0.1 nets=127.0.0.0/8
	if has_ipv6_lo; then
		protos="ipv4, ipv6"
		ifaces="127.0.0.1, [::1]"
		nets="127.0.0.0/8 [::1]/128"
	fi
	cat >"$PC/main.cf" <<EOF
# Written by test/peers/postfix.sh for $D; regenerated on every start.
compatibility_level = 3.6
# A private instance: its own queue and data directories (the master's lock
# file and pid file live there), so several instances run at once without
# multi_instance_* settings (those are only for postmulti(1)-managed instances).
queue_directory = $Q
data_directory = $D/data
mail_owner = postfix
setgid_group = postdrop
myhostname = $HOSTNAME_FQ
mydomain = localdomain
myorigin = \$myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = $ifaces
inet_protocols = $protos
mynetworks = $nets
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
biff = no
# No syslog on test machines: postlogd (the postlog service in master.cf) writes here.
maillog_file = $D/maillog
maillog_file_prefixes = $D
smtpd_banner = \$myhostname ESMTP peers-postfix
message_size_limit = 52428800
# Tests send bursts: do not slow smtpd down when the queue is busy.
in_flow_delay = 0s
# accept any recipient in any domain -> one catch-all Maildir ($MD/sink/)
virtual_mailbox_domains = regexp:$PC/vdomains
virtual_mailbox_maps = regexp:$PC/vmailbox
virtual_mailbox_base = $MD
virtual_mailbox_limit = 0
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
transport_maps = regexp:$PC/transport
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access regexp:$PC/rcpt_access
smtpd_authorized_xclient_hosts = $nets
smtpd_authorized_xforward_hosts = $nets
smtpd_tls_security_level = may
smtpd_tls_cert_file = $D/tls/cert.pem
smtpd_tls_key_file = $D/tls/key.pem
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database =
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = $PC/sasl
smtpd_sasl_local_domain = \$myhostname
smtpd_sasl_security_options = noanonymous
smtpd_tls_auth_only = no
smtpd_sasl_authenticated_header = yes
EOF
	printf '/./ OK\n' >"$PC/vdomains"
	printf '/./ sink/\n' >"$PC/vmailbox"
	printf '/@discard\\.invalid$/ discard:\n' >"$PC/transport"
	cat >"$PC/rcpt_access" <<'EOF'
/^reject@/    550 5.1.1 <reject>: rejected by peers test rule
/^tempfail@/  450 4.2.0 <tempfail>: temporary failure by peers test rule
EOF
	{
		# chroot column "n" everywhere: the services read DIR directly.
		local a
		for a in "${ADDRS[@]}"; do
			case "$a" in *:*) a="[$a]" ;; esac
			printf '%s:%s inet n - n - - smtpd\n' "$a" "$PORT"
		done
		cat <<'EOF'
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
	} >"$PC/master.cf"
	cat >"$PC/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $PC/sasl/sasldb2
EOF
	rm -f "$PC/sasl/sasldb2"
	printf %s "$SASL_PASS" | saslpasswd2 -p -c -f "$PC/sasl/sasldb2" -u "$HOSTNAME_FQ" "$SASL_USER"
	# smtpd runs as postfix and reads the sasldb itself (no saslauthd).
	chown root:postfix "$PC/sasl/sasldb2"
	chmod 640 "$PC/sasl/sasldb2"
	echo "$PORT" >"$D/port"
	# `postfix start` sleeps ~2.4 s when main.cf was modified in the last couple
	# of seconds (it waits for an editor to finish): backdate the config files.
	touch -d "@$(($(date +%s) - 60))" "$PC/main.cf" "$PC/master.cf"
}

start() {
	local p t0
	[ "$(id -u)" = 0 ] || die "must run as root"
	command -v postfix >/dev/null || die "postfix is not installed (test/install-deps.sh)"
	command -v saslpasswd2 >/dev/null || die "saslpasswd2 is not installed (sasl2-bin; test/install-deps.sh)"
	if p=$(master_pid); then
		wait_for 10 all_banners_ok || die "running (master pid $p) but no 220 banner on port $PORT"
		say "already running (master pid $p)"
		say "ready 127.0.0.1:$PORT master=$p maildir=$MD/sink"
		return 0
	fi
	port_busy && die "port $PORT is already in use by something else"
	t0=$(now_ms)
	write_conf
	# stdin from /dev/null: postfix-script must never wait on a terminal (CI).
	postfix -c "$PC" start </dev/null >>"$D/postfix.stdout" 2>&1 ||
		die "postfix start failed: $(tail -5 "$D/postfix.stdout" 2>/dev/null) $(tail -5 "$D/maillog" 2>/dev/null)"
	wait_for 30 all_banners_ok || die "no 220 banner on port $PORT, see $D/maillog"
	p=$(master_pid) || die "master pid file missing"
	say "ready 127.0.0.1:$PORT master=$p maildir=$MD/sink in $(($(now_ms) - t0)) ms${ADDRS[1]:+ (also [::1]:$PORT)}"
}

stop() {
	local p i
	if ! p=$(master_pid); then
		say "not running"
		if wait_for 5 eval '! port_busy'; then return 0; fi
		die "not running, but port $PORT is still in use"
	fi
	# Not `postfix stop`: it polls with `sleep 1`, which costs a second per
	# instance. The master's TERM handler signals its whole process group and
	# exits; we poll until every member of that group is gone.
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
	rm -f "$Q/pid/master.pid"
	say "stopped (master pid $p)"
}

status() {
	local p
	if p=$(master_pid) && all_banners_ok; then
		say "running: master pid $p, 127.0.0.1:$PORT, maildir $MD/sink"
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
