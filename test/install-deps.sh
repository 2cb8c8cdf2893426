#!/usr/bin/env bash
# install-deps.sh - install the Debian packages the end-to-end tests need.
#
# Usage: test/install-deps.sh [--check] [PACKAGE...]
#   no argument   install every package in $PKGS that is missing
#   PACKAGE...    install only these (when missing)
#   --check       install nothing: list what is missing, exit 1 if anything is
#
# Idempotent and quick when everything is present: a dpkg-query comes first and
# nothing else runs. Runs non-interactively as root (CI has no stdin). Distro
# services are never started: a policy-rc.d that answers 101 ("action
# forbidden") is in place for the duration of the install, and postfix is
# preseeded to "No configuration" so its postinst writes no /etc/postfix/main.cf
# and asks nothing. The tests start their own instances (test/peers/*.sh).
set -euo pipefail
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

PKGS="postfix swaks iptables nftables iproute2 mandoc sasl2-bin libsasl2-modules openssl
      clamav-daemon clamdscan spamassassin spamd spamc"

say() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
[ $# -gt 0 ] && PKGS="$*"

missing() {
	local p m=""
	for p in $PKGS; do
		[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || m="$m $p"
	done
	echo "${m# }"
}

todo=$(missing)
if [ -z "$todo" ]; then
	say "all present: $(echo $PKGS)"
	exit 0
fi
if [ "$check_only" = 1 ]; then
	say "missing: $todo"
	exit 1
fi
[ "$(id -u)" = 0 ] || die "must run as root to install: $todo"
say "missing: $todo"

# Another apt/dpkg run (unattended upgrades, another session's install) may hold
# the locks for a while. apt-get waits for the dpkg frontend lock with
# DPkg::Lock::Timeout; the retry loop covers the lists lock of `apt-get update`
# and anything else that fails fast on "Could not get lock".
APT=(apt-get -q -y -o DPkg::Lock::Timeout=600
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt_retry() {
	local i rc log
	log=$(mktemp)
	for i in $(seq 1 60); do
		rc=0
		# stream apt's output (indented) while keeping a copy to look at
		"${APT[@]}" "$@" </dev/null 2>&1 | sed -u 's/^/    /' | tee "$log" || rc=$?
		if [ "$rc" = 0 ]; then rm -f "$log"; return 0; fi
		case "$(cat "$log")" in
		*"Could not get lock"* | *"Unable to acquire the dpkg frontend lock"* | *"is another process using it"*)
			say "apt is busy (another process holds the lock), retrying in 10 s ($i/60)"
			sleep 10 ;;
		*) rm -f "$log"; return "$rc" ;;
		esac
	done
	rm -f "$log"
	return 1
}

# `apt-get update` only when needed: when some missing package has no install
# candidate (no package lists yet, as on a fresh image, or lists too old to
# know it). After an install that fails (stale lists, 404), update once and retry.
need_update=0
for p in $todo; do
	case "$(apt-cache policy "$p" 2>/dev/null)" in
	*"Candidate: (none)"* | "") need_update=1 ;;
	*Candidate:*) ;;
	*) need_update=1 ;;
	esac
done
updated=0
if [ "$need_update" = 1 ]; then
	say "package lists do not know every missing package: apt-get update"
	apt_retry update || die "apt-get update failed"
	updated=1
fi

# Preseed postfix: no interactive question, no system configuration written.
say "preseeding debconf for postfix (No configuration)"
printf '%s\n' \
	"postfix postfix/main_mailer_type select No configuration" \
	"postfix postfix/mailname string peers.localdomain" | debconf-set-selections

# policy-rc.d: keep invoke-rc.d from starting postfix, clamav-daemon,
# clamav-freshclam, spamd... Only remove it afterwards if we created it.
made_policy=0
cleanup() { [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; return 0; }
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
	say "installing a temporary /usr/sbin/policy-rc.d (exit 101): no service starts"
	printf '#!/bin/sh\n# temporary, from smtp-gated test/install-deps.sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	made_policy=1
fi

say "apt-get install --no-install-recommends $todo"
# shellcheck disable=SC2086 # word splitting of the package list is wanted
if ! apt_retry install --no-install-recommends $todo; then
	[ "$updated" = 1 ] && die "apt-get install failed"
	say "install failed; the package lists may be stale: apt-get update and retry"
	apt_retry update || die "apt-get update failed"
	# shellcheck disable=SC2086
	apt_retry install --no-install-recommends $todo || die "apt-get install failed"
fi

# spamassassin's postinst imports the sa-update keyring with gpg, which leaves a
# gpg-agent running behind; stop that one agent (by its own homedir, not by name).
if command -v gpgconf >/dev/null && [ -S /var/lib/spamassassin/sa-update-keys/S.gpg-agent ]; then
	say "stopping the gpg-agent left by spamassassin's postinst"
	runuser -u debian-spamd -- gpgconf --homedir /var/lib/spamassassin/sa-update-keys --kill gpg-agent 2>/dev/null || true
fi

still=$(missing)
[ -z "$still" ] || die "still missing after install: $still"
say "done: $todo"
