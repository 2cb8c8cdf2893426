package scanner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// spamd is a client of SpamAssassin's spamd. addr is antispam_path: a unix
// socket when it starts with "/", else host:port. One connection per
// message, as spamc does.
type spamd struct {
	addr    string
	timeout time.Duration // timeout_spam: the whole exchange
}

func (s *spamd) name() string { return "spamd" }

// check sends the message (without the spool header line) with CHECK and
// returns spamd's score. Whether that is spam is spam_threshold's call, not
// spamd's required_score.
func (s *spamd) check(ctx context.Context, sp *spool) (float64, error) {
	conn, err := dialScanner(ctx, s.addr, s.timeout)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	werr := sendCheck(conn, sp.message(), sp.msgSize())
	// spamd reads Content-length bytes and answers; ending our side
	// tells it (and a proxy in between) that nothing more comes.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok && werr == nil {
		cw.CloseWrite()
	}
	reply, rerr := readAll(conn, 64<<10)
	if len(reply) == 0 {
		return 0, exchangeError(s.addr, s.timeout, werr, rerr)
	}
	if isTimeout(rerr) {
		return 0, fmt.Errorf("%s: no complete answer within %v", s.addr, s.timeout)
	}
	_, score, _, err := parseSpamdReply(reply)
	return score, err
}

// ping sends PING and wants PONG.
func (s *spamd) ping(ctx context.Context) error {
	conn, err := dialScanner(ctx, s.addr, s.timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, werr := io.WriteString(conn, "PING SPAMC/1.5\r\n\r\n")
	reply, rerr := readAll(conn, maxReply)
	if len(reply) == 0 {
		return exchangeError(s.addr, s.timeout, werr, rerr)
	}
	line, _, _ := strings.Cut(string(reply), "\n")
	if f := strings.Fields(line); len(f) < 3 || !strings.HasPrefix(f[0], "SPAMD/") || f[1] != "0" || f[2] != "PONG" {
		return fmt.Errorf("%s: PING answered %q", s.addr, clip(strings.TrimSpace(line)))
	}
	return nil
}

func sendCheck(w io.Writer, msg io.Reader, size int64) error {
	if _, err := fmt.Fprintf(w, "CHECK SPAMC/1.2\r\nContent-length: %d\r\n\r\n", size); err != nil {
		return err
	}
	n, err := io.Copy(w, msg)
	if err == nil && n != size {
		err = fmt.Errorf("spool: read %d bytes, want %d", n, size)
	}
	return err
}

// readAll reads until the end of the connection, at most max bytes (more
// is an error).
func readAll(r io.Reader, max int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err == nil && len(b) > max {
		return b[:max], fmt.Errorf("answer longer than %d bytes", max)
	}
	return b, err
}

// parseSpamdReply reads spamd's answer to CHECK:
//
//	SPAMD/1.1 0 EX_OK
//	Spam: True ; 1002.3 / 5.0
//	(empty line)
//
// A status other than 0 is spamd's error ("SPAMD/1.0 76 Bad header line").
func parseSpamdReply(b []byte) (isSpam bool, score, threshold float64, err error) {
	head, _, _ := bytes.Cut(b, []byte("\r\n\r\n"))
	lines := strings.Split(strings.ReplaceAll(string(head), "\r\n", "\n"), "\n")
	status := strings.TrimSpace(lines[0])
	if !printable(status) {
		return false, 0, 0, fmt.Errorf("unreadable answer %q", clip(status))
	}
	f := strings.Fields(status)
	if len(f) < 2 || !strings.HasPrefix(f[0], "SPAMD/") {
		return false, 0, 0, fmt.Errorf("unexpected answer %q", clip(status))
	}
	if f[1] != "0" {
		return false, 0, 0, fmt.Errorf("answered %q", clip(strings.Join(f[1:], " ")))
	}
	for _, l := range lines[1:] {
		if l == "" {
			break
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "Spam") {
			continue
		}
		return parseSpamHeader(strings.TrimSpace(v))
	}
	return false, 0, 0, errors.New("answer without a Spam header")
}

// parseSpamHeader reads "True ; 1002.3 / 5.0".
func parseSpamHeader(v string) (isSpam bool, score, threshold float64, err error) {
	bad := func() (bool, float64, float64, error) {
		return false, 0, 0, fmt.Errorf("malformed Spam header %q", clip(v))
	}
	flag, nums, ok := strings.Cut(v, ";")
	if !ok {
		return bad()
	}
	switch strings.ToLower(strings.TrimSpace(flag)) {
	case "true", "yes":
		isSpam = true
	case "false", "no":
	default:
		return bad()
	}
	s, t, ok := strings.Cut(nums, "/")
	if !ok {
		return bad()
	}
	score, err1 := strconv.ParseFloat(strings.TrimSpace(s), 64)
	threshold, err2 := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err1 != nil || err2 != nil || !finite(score) || !finite(threshold) {
		return bad()
	}
	return isSpam, score, threshold, nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
