package scanner

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/loadavg"
	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

func spamMessage(t *testing.T) []byte {
	return harness.SpamMessage("a@example.com", "b@example.org", harness.Token(t))
}

// GTUBE is spam, an ordinary message is not, over the unix socket and TCP;
// the score is reported either way.
func TestSpamdVerdicts(t *testing.T) {
	s := harness.Spamd(t)
	for _, addr := range []string{s.Socket, s.Addr} {
		e, lb := testEngine(t, spamdConfig(addr))
		v := scanWith(t, e, lb, privateSpool(t, spamMessage(t)))
		if v.Kind != ipc.VerdictSpam || v.Score < 1000 || v.Err != "" || !slices.Equal(v.Scanned, []string{"spamd"}) {
			t.Errorf("%s: GTUBE: verdict %+v, want spam with a score of 1000 or more", addr, v)
		}
		if line := lb.lastScanLine(); !strings.Contains(line, "verdict=spam") || !strings.Contains(line, "score=") {
			t.Errorf("%s: log line %q lacks the verdict or the score", addr, line)
		}
		v = scanWith(t, e, lb, privateSpool(t, hamMessage(harness.Token(t))))
		if v.Kind != ipc.VerdictClean || v.Err != "" || v.Score >= e.cfg.SpamThreshold || !slices.Equal(v.Scanned, []string{"spamd"}) {
			t.Errorf("%s: ham: verdict %+v, want clean with a score below %v", addr, v, e.cfg.SpamThreshold)
		}
		if line := lb.lastScanLine(); !strings.Contains(line, "verdict=clean") || !strings.Contains(line, "score=") {
			t.Errorf("%s: log line %q lacks the verdict or the score", addr, line)
		}
	}
}

// The proxy's spam_threshold decides, not spamd's required_score: above
// GTUBE's score, GTUBE passes; at or below an ordinary message's score, it
// is spam.
func TestSpamThreshold(t *testing.T) {
	s := harness.Spamd(t)
	cfg := spamdConfig(s.Socket)
	cfg.SpamThreshold = 5000
	e, lb := testEngine(t, cfg)
	v := scanWith(t, e, lb, privateSpool(t, spamMessage(t)))
	if v.Kind != ipc.VerdictClean || v.Score < 1000 {
		t.Errorf("threshold 5000: verdict %+v, want clean with GTUBE's score", v)
	}
	ham := hamMessage(harness.Token(t))
	cfg.SpamThreshold = 1000
	v = scanWith(t, e, lb, privateSpool(t, ham))
	if v.Kind != ipc.VerdictClean {
		t.Fatalf("ham: verdict %+v, want clean", v)
	}
	cfg.SpamThreshold = v.Score // spam when score >= threshold
	if v2 := scanWith(t, e, lb, privateSpool(t, ham)); v2.Kind != ipc.VerdictSpam || v2.Score != v.Score {
		t.Errorf("threshold = the message's score %v: verdict %+v, want spam", v.Score, v2)
	}
}

// spam_max_size: bigger messages are not spam-scanned; 0 turns antispam off
// (the manual's FAQ).
func TestSpamMaxSize(t *testing.T) {
	s := harness.Spamd(t)
	msg := spamMessage(t)
	for _, tc := range []struct {
		max  uint64
		want ipc.VerdictKind
		why  string
	}{
		{uint64(len(msg)) - 1, ipc.VerdictClean, "skipped=spamd(spam_max_size)"},
		{0, ipc.VerdictClean, "skipped=spamd(spam_max_size=0)"},
		{uint64(len(msg)), ipc.VerdictSpam, "scanners=spamd"},
	} {
		cfg := spamdConfig(s.Socket)
		cfg.SpamMaxSize = tc.max
		e, lb := testEngine(t, cfg)
		v := scanWith(t, e, lb, privateSpool(t, msg))
		if v.Kind != tc.want {
			t.Errorf("spam_max_size %d (message %d): verdict %+v, want %s", tc.max, len(msg), v, tc.want)
		}
		if line := lb.lastScanLine(); !strings.Contains(line, tc.why) {
			t.Errorf("spam_max_size %d: log line %q lacks %q", tc.max, line, tc.why)
		}
	}
}

// spam_max_load: above it, no spam scan; 0 is no limit.
func TestSpamMaxLoad(t *testing.T) {
	s := harness.Spamd(t)
	for _, tc := range []struct {
		max, load float64
		want      ipc.VerdictKind
	}{
		{1, 1.5, ipc.VerdictClean},
		{1, 1, ipc.VerdictSpam}, // "higher" only
		{0, 100, ipc.VerdictSpam},
	} {
		cfg := spamdConfig(s.Socket)
		cfg.SpamMaxLoad = tc.max
		e, lb := testEngine(t, cfg)
		e.load = func() (float64, error) { return tc.load, nil }
		v := scanWith(t, e, lb, privateSpool(t, spamMessage(t)))
		if v.Kind != tc.want {
			t.Errorf("spam_max_load %v, load %v: verdict %+v, want %s", tc.max, tc.load, v, tc.want)
		}
		if tc.want == ipc.VerdictClean && !strings.Contains(lb.lastScanLine(), "spam_max_load") {
			t.Errorf("log line %q does not say why spamd was skipped", lb.lastScanLine())
		}
	}
}

// The real load average reads on this system.
func TestLoadAvg(t *testing.T) {
	l, err := loadavg.Get()
	if err != nil || l < 0 {
		t.Fatalf("loadavg.Get() = %v, %v", l, err)
	}
}

// What spamd receives is the message without the spool header line, with
// a Content-length that matches it.
func TestSpamdRequest(t *testing.T) {
	got := make(chan string, 1)
	addr := fakeServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		var head []string
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if l == "\r\n" {
				break
			}
			head = append(head, l)
		}
		n := -1
		for _, h := range head[1:] {
			if k, v, _ := strings.Cut(h, ":"); strings.EqualFold(k, "Content-length") {
				n, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		body, _ := io.ReadAll(br) // up to our end of writing
		if len(body) != n {
			got <- "Content-length " + strconv.Itoa(n) + ", body " + strconv.Itoa(len(body))
			return
		}
		got <- head[0] + string(body)
		io.WriteString(c, "SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.5 / 5.0\r\n\r\n")
	})
	e, lb := testEngine(t, spamdConfig(addr))
	msg := hamMessage("x")
	v := scanWith(t, e, lb, privateSpool(t, msg))
	if want := "CHECK SPAMC/1.2\r\n" + string(msg); <-got != want {
		t.Errorf("spamd got a different request than %q", want)
	}
	if v.Kind != ipc.VerdictClean || v.Score != 0.5 {
		t.Errorf("verdict %+v, want clean, score 0.5", v)
	}
}

func TestSpamdFaults(t *testing.T) {
	cases := []struct {
		name  string
		serve func(net.Conn)
		want  string
		min   time.Duration
	}{
		{"never answers", func(c net.Conn) {
			io.Copy(io.Discard, c)
			time.Sleep(1500 * time.Millisecond) // until the client gave up
		}, "no answer within 1s", 900 * time.Millisecond},
		{"half an answer", func(c net.Conn) {
			io.Copy(io.Discard, c)
			io.WriteString(c, "SPAMD/1.1 0 EX_OK\r\n")
			time.Sleep(1500 * time.Millisecond) // until the client gave up
		}, "no complete answer within 1s", 900 * time.Millisecond},
		{"error status", func(c net.Conn) {
			io.Copy(io.Discard, c)
			io.WriteString(c, "SPAMD/1.0 76 Bad header line: (Content-Length mismatch)\r\n")
		}, "76 Bad header line", 0},
		{"no Spam header", func(c net.Conn) {
			io.Copy(io.Discard, c)
			io.WriteString(c, "SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n")
		}, "without a Spam header", 0},
		{"bad score", func(c net.Conn) {
			io.Copy(io.Discard, c)
			io.WriteString(c, "SPAMD/1.1 0 EX_OK\r\nSpam: True ; NaN / 5.0\r\n\r\n")
		}, "malformed Spam header", 0},
		{"garbage", func(c net.Conn) {
			io.Copy(io.Discard, c)
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
		}, "unexpected answer", 0},
		{"closes", func(c net.Conn) {}, "", 0},
		{"dies mid-scan", func(c net.Conn) { c.Read(make([]byte, 10)) }, "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := fakeServer(t, tc.serve)
			cfg := spamdConfig(path)
			cfg.TimeoutSpam = 1
			cfg.TimeoutScanner = 30 // timeout_spam, not timeout_scanner, bounds spamd
			e, lb := testEngine(t, cfg)
			t0 := time.Now()
			v := scanWith(t, e, lb, privateSpool(t, message("x")))
			d := time.Since(t0)
			// The antispam scanner only advises: its failure leaves
			// the verdict clean, with the error said.
			if v.Kind != ipc.VerdictClean || !strings.HasPrefix(v.Err, "spamd: ") || !strings.Contains(v.Err, tc.want) {
				t.Errorf("verdict %+v, want clean with a spamd error with %q", v, tc.want)
			}
			if d < tc.min || d > tc.min+2*time.Second {
				t.Errorf("took %v, want about %v", d, tc.min)
			}
		})
	}
	e, lb := testEngine(t, spamdConfig(filepath.Join(t.TempDir(), "no-spamd.sock")))
	if v := scanWith(t, e, lb, privateSpool(t, message("x"))); v.Kind != ipc.VerdictClean || !strings.Contains(v.Err, "connect") {
		t.Errorf("no spamd: verdict %+v, want clean with a connect error", v)
	}
}

// Only the virus scanner's failure makes the verdict an error; spam found
// meanwhile is still said (the session refuses it under lock_on spam).
func TestSpamdAdvisory(t *testing.T) {
	spamAnswer := func(c net.Conn) {
		io.Copy(io.Discard, c)
		io.WriteString(c, "SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n")
	}
	for _, tc := range []struct {
		name  string
		spamd func(net.Conn) // nil: none listening
		kind  ipc.VerdictKind
		errs  []string
	}{
		{"both fail", nil, ipc.VerdictError, []string{"clamd: ", "spamd: "}},
		{"clamd fails, spam", spamAnswer, ipc.VerdictSpam, []string{"clamd: "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := spamdConfig(filepath.Join(t.TempDir(), "no-spamd.sock"))
			if tc.spamd != nil {
				cfg.AntispamPath = fakeServer(t, tc.spamd)
			}
			cfg.AntivirusType = config.AntivirusClamd
			cfg.AntivirusPath = filepath.Join(t.TempDir(), "no-clamd.sock")
			e, lb := testEngine(t, cfg)
			v := scanWith(t, e, lb, privateSpool(t, message("x")))
			if v.Kind != tc.kind {
				t.Errorf("verdict %+v, want %s", v, tc.kind)
			}
			for _, want := range tc.errs {
				if !strings.Contains(v.Err, want) {
					t.Errorf("err %q lacks %q", v.Err, want)
				}
			}
		})
	}
}
