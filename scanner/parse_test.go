package scanner

import (
	"math"
	"strings"
	"testing"
)

func TestParseClamdReply(t *testing.T) {
	for _, tc := range []struct {
		in    string
		found bool
		name  string
		err   string
	}{
		{"fd[12]: Eicar-Signature FOUND\x00", true, "Eicar-Signature", ""},
		{"stream: Win.Test.EICAR_HDB-1 FOUND\n", true, "Win.Test.EICAR_HDB-1", ""},
		{"stream: SmtpGated.Test.Eicar.UNOFFICIAL FOUND", true, "SmtpGated.Test.Eicar.UNOFFICIAL", ""},
		{"stream:  FOUND\x00", true, "", ""},
		{"fd[3]: OK\x00", false, "", ""},
		{"stream: OK\n", false, "", ""},
		{"INSTREAM size limit exceeded. ERROR\x00", false, "", "INSTREAM size limit exceeded."},
		{"fd[3]: lstat() failed: No such file or directory. ERROR", false, "", "lstat() failed"},
		{"FOUND", false, "", "unexpected"},
		{" FOUND", false, "", "malformed"},
		{"UNKNOWN COMMAND\x00", false, "", "unexpected"},
		{"", false, "", "empty"},
		{"\x00", false, "", "empty"},
		{"stream: Bad\x1bName FOUND", false, "", "unreadable"},
		{"stream: OK\r", false, "", "unreadable"},
	} {
		found, name, err := parseClamdReply([]byte(tc.in))
		if found != tc.found || name != tc.name || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("parseClamdReply(%q) = %v, %q, %v; want %v, %q, %q", tc.in, found, name, err, tc.found, tc.name, tc.err)
		}
	}
}

func TestParseSpamdReply(t *testing.T) {
	for _, tc := range []struct {
		in           string
		spam         bool
		score, thres float64
		err          string
	}{
		{"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1002.3 / 5.0\r\n\r\n", true, 1002.3, 5, ""},
		{"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -2.5 / 5.0\r\n\r\n", false, -2.5, 5, ""},
		{"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nspam: yes ; 7 / 7\r\n\r\n", true, 7, 7, ""},
		{"SPAMD/1.1 0 EX_OK\nSpam: No;0.0/5.0\n\n", false, 0, 5, ""},
		{"SPAMD/1.0 76 Bad header line: x\r\n", false, 0, 0, "76 Bad header line"},
		{"SPAMD/1.1 0 EX_OK\r\n\r\nSpam: True ; 1 / 5\r\n", false, 0, 0, "without a Spam header"},
		{"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1 / 5\r\n\r\n", false, 0, 0, "malformed"},
		{"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1\r\n\r\n", false, 0, 0, "malformed"},
		{"SPAMD/1.1 0 EX_OK\r\nSpam: True ; Inf / 5\r\n\r\n", false, 0, 0, "malformed"},
		{"SPAMD/1.1 0 EX_OK\r\nSpam: True 1 / 5\r\n\r\n", false, 0, 0, "malformed"},
		{"HTTP/1.1 200 OK\r\n\r\n", false, 0, 0, "unexpected"},
		{"", false, 0, 0, "unexpected"},
		{"\xff\xfe", false, 0, 0, "unreadable"},
	} {
		spam, score, thres, err := parseSpamdReply([]byte(tc.in))
		if spam != tc.spam || score != tc.score || thres != tc.thres || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("parseSpamdReply(%q) = %v, %v, %v, %v; want %v, %v, %v, %q", tc.in, spam, score, thres, err, tc.spam, tc.score, tc.thres, tc.err)
		}
	}
}

func TestParseMksdReply(t *testing.T) {
	for _, tc := range []struct {
		in    string
		found bool
		name  string
		err   string
	}{
		{"OK /tmp/x\n", false, "", ""},
		{"CLN /tmp/x\n", false, "", ""},
		{"DEL /tmp/x\n", false, "", ""},
		{"OK\n", false, "", ""},
		{"VIR EICAR_Test_File /tmp/x\n", true, "EICAR_Test_File", ""},
		{"VIR\n", true, "", ""},
		{"ERR no access\n", false, "", "no access"},
		{"OKAY\n", false, "", "unexpected"},
		{"   \n", false, "", "empty"},
		{"\n", false, "", "empty"},
		{"VIR \x7f\n", false, "", "unreadable"},
	} {
		found, name, err := parseMksdReply([]byte(tc.in))
		if found != tc.found || name != tc.name || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("parseMksdReply(%q) = %v, %q, %v; want %v, %q, %q", tc.in, found, name, err, tc.found, tc.name, tc.err)
		}
	}
}

// Scanner replies are untrusted input: whatever they say, the parsers do
// not panic, and what they return is fit for a log line and an SMTP reply.
func FuzzClamdReply(f *testing.F) {
	for _, s := range []string{"fd[12]: Eicar-Signature FOUND\x00", "stream: OK\n", "INSTREAM size limit exceeded. ERROR\x00", "stream:  FOUND", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		found, name, err := parseClamdReply(b)
		if err != nil && (found || name != "") {
			t.Fatalf("error %v with found %v name %q", err, found, name)
		}
		if !printable(name) || len(name) > maxReply {
			t.Fatalf("name %q", name)
		}
		if !found && name != "" {
			t.Fatalf("clean with name %q", name)
		}
	})
}

func FuzzSpamdReply(f *testing.F) {
	for _, s := range []string{"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1002.3 / 5.0\r\n\r\n", "SPAMD/1.0 76 Bad header line: x\r\n", "SPAMD/1.1 0 EX_OK\nSpam: No;0.0/5.0\n\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		spam, score, thres, err := parseSpamdReply(b)
		if err != nil && (spam || score != 0 || thres != 0) {
			t.Fatalf("error %v with %v %v %v", err, spam, score, thres)
		}
		if math.IsNaN(score) || math.IsInf(score, 0) || math.IsNaN(thres) || math.IsInf(thres, 0) {
			t.Fatalf("score %v threshold %v", score, thres)
		}
	})
}

func FuzzMksdReply(f *testing.F) {
	for _, s := range []string{"OK /tmp/x\n", "VIR EICAR /tmp/x\n", "ERR x\n", "VIR\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		found, name, err := parseMksdReply(b)
		if err != nil && (found || name != "") {
			t.Fatalf("error %v with found %v name %q", err, found, name)
		}
		if !printable(name) || strings.ContainsRune(name, ' ') {
			t.Fatalf("name %q", name)
		}
	})
}
