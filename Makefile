# smtp-gated — see README.md.
#   make run     build and start the daemon in the foreground (no root needed)
#   make test    install what the tests need (as root) and run every test
#   make bench   measure the proxy against a direct connection and HAProxy
#   make fuzz    fuzz the session engine for FUZZTIME (default 60s)
#   make install install binaries, man pages, sample config, systemd units and
#                rc.d scripts (DESTDIR, PREFIX, SBINDIR, MANDIR, ETCDIR, UNITDIR)

GO      ?= go
PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
ETCDIR  ?= /etc
# systemd units (systemd reads $(PREFIX)/lib/systemd/system for /usr/local
# and /usr), and the rc.d scripts and the sample configuration as examples.
UNITDIR ?= $(PREFIX)/lib/systemd/system
EXAMPLEDIR ?= $(PREFIX)/share/examples/smtp-gated
RUNDIR  := $(CURDIR)/run
BIN     := bin/smtp-gated bin/smtpgatectl bin/smtp-gated-helper
GOFILES := $(shell find . -name '*.go' -not -path './run/*')

.PHONY: all build run test unit fuzz fuzz-short e2e lint cross bench install clean

all: build

build: $(BIN)

bin/smtp-gated: $(GOFILES) go.mod
	$(GO) build -o $@ ./cmd/smtp-gated

bin/smtpgatectl: $(GOFILES) go.mod
	$(GO) build -o $@ ./cmd/smtpgatectl

# The remote-udp proxy-helper, for the Linux router (smtp-gated-helper(8)).
bin/smtp-gated-helper: $(GOFILES) go.mod
	$(GO) build -o $@ ./cmd/smtp-gated-helper

# A local configuration: everything under ./run, the MTA on 127.0.0.1:25.
# Edit run/smtp-gated.conf to taste; it is written only when missing.
run/smtp-gated.conf: etc/dev.conf.in
	mkdir -p $(RUNDIR)
	test -f $@ || sed 's|@RUNDIR@|$(RUNDIR)|g' etc/dev.conf.in > $@

# The clamd sockets `make run` scans with when one answers (Debian's).
CLAMD_SOCKETS ?= /run/clamav/clamd.ctl /var/run/clamav/clamd.ctl

# What `make run` runs: the daemon, and a bundled test MTA when nothing
# answers on the configured one (test/devrun).
bin/devrun: $(GOFILES) go.mod
	$(GO) build -o $@ ./test/devrun

run: build bin/devrun run/smtp-gated.conf
	./bin/devrun -conf run/smtp-gated.conf -daemon bin/smtp-gated -clamd "$(CLAMD_SOCKETS)"

test: lint unit fuzz-short e2e cross

# Debian packages the tests need (Postfix, iptables, mandoc, ...): only
# root can install them; everyone else gets the tests that need them
# skipped.
deps:
	@if [ "$$(id -u)" = 0 ]; then ./test/install-deps.sh; \
	else echo "not root: not installing test dependencies (tests needing them are skipped)"; fi

# staticcheck, at a fixed version, from the Go module proxy.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

unit:
	$(GO) test -race -count=1 ./ipc/... ./internal/... ./master/... ./session/... ./lookup/... ./scanner/... ./lockd/... ./cmd/...

# The session engine with fake peers, fuzzed (session/fuzz_test.go); an
# input that fails is written to session/testdata/fuzz/FuzzEngine and is
# run by every later go test of the package.
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzEngine$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 100x ./session/

fuzz-short:
	$(MAKE) fuzz FUZZTIME=15s

e2e: deps build
	@if [ "$$(id -u)" = 0 ]; then export SMTPGATED_REQUIRE_PEERS=1; fi; \
	$(GO) test -count=1 -timeout 30m ./test/...
	@if command -v mandoc >/dev/null; then mandoc -Tlint -Wwarning man/*.[0-9] && echo "mandoc -Tlint: clean"; \
	else echo "mandoc not installed: man pages not linted"; [ "$$(id -u)" != 0 ]; fi

# The BSD builds of the daemon must compile, and the whole module must
# vet there (the tests that need Linux carry build tags).
DAEMON_PKGS = ./cmd/... ./master/... ./session/... ./lookup/... ./scanner/... ./lockd/... ./ipc/... ./internal/...
cross:
	for os in freebsd openbsd; do \
		GOOS=$$os GOARCH=amd64 $(GO) build -o /dev/null $(DAEMON_PKGS) && \
		GOOS=$$os GOARCH=amd64 $(GO) vet ./... || exit 1; \
	done

# One run, one table (test/bench/table_test.go), also written to
# bench.txt: direct to a sink MTA, HAProxy in mode tcp (Debian's package,
# installed as root when missing; its service is not started), smtp-gated
# with scanners off, clamd alone and smtp-gated with clamd. About 5 minutes
# on 2 CPUs. BENCH_PROFILE=DIR also records each of the daemon's processes
# with perf(1) under the bulk, small, pipelined and clamd loads, reports
# in DIR. BENCH_ROWS=idle,bulk,... measures only those loads (idle, bulk,
# small, pipelined, scale, clamd). The other benchmarks of test/bench run
# with go test -bench NAME.
BENCH_PROFILE ?=
BENCH_ROWS ?=
bench: build
	@if [ "$$(id -u)" = 0 ]; then ./test/install-deps.sh haproxy clamav-daemon; \
	else echo "not root: HAProxy and clamd are measured only when installed and usable"; fi
	SMTPGATED_BIN=$(CURDIR)/bin/smtp-gated SMTPGATED_BENCH_TABLE=$(CURDIR)/bench.txt \
	SMTPGATED_BENCH_PROFILE=$(BENCH_PROFILE) SMTPGATED_BENCH_ROWS=$(BENCH_ROWS) \
	$(GO) test -run '^$$' -bench '^BenchmarkTable$$' -benchtime 1x -timeout 30m ./test/bench/

install: build
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(ETCDIR) \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(EXAMPLEDIR)/rc.d/openbsd $(DESTDIR)$(EXAMPLEDIR)/rc.d/freebsd
	install -m 0755 bin/smtp-gated bin/smtpgatectl bin/smtp-gated-helper $(DESTDIR)$(SBINDIR)/
	install -m 0644 man/smtp-gated.8 man/smtpgatectl.8 man/smtp-gated-helper.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 man/smtp-gated.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 etc/smtp-gated.conf $(DESTDIR)$(EXAMPLEDIR)/smtp-gated.conf
	test -f $(DESTDIR)$(ETCDIR)/smtp-gated.conf || install -m 0600 etc/smtp-gated.conf $(DESTDIR)$(ETCDIR)/smtp-gated.conf
	for u in smtp-gated.service smtp-gated.socket; do \
		sed 's|/usr/local/sbin/|$(SBINDIR)/|g' etc/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	for os in openbsd freebsd; do \
		sed 's|/usr/local/sbin/|$(SBINDIR)/|g' etc/rc.d/$$os/smtp_gated > $(DESTDIR)$(EXAMPLEDIR)/rc.d/$$os/smtp_gated && \
		chmod 0755 $(DESTDIR)$(EXAMPLEDIR)/rc.d/$$os/smtp_gated || exit 1; \
	done

clean:
	rm -rf bin run
