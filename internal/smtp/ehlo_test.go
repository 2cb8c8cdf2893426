package smtp

import (
	"bufio"
	"reflect"
	"strings"
	"testing"
)

func readReply(t *testing.T, s string) *Reply {
	t.Helper()
	r, err := ReadReply(bufio.NewReader(strings.NewReader(s)), 512)
	if err != nil {
		t.Fatalf("ReadReply(%q): %v", s, err)
	}
	return r
}

func TestRewriteEHLO(t *testing.T) {
	hideAll := []string{"CHUNKING", "BINARYMIME", "XEXCH50", "XCLIENT"}
	tests := []struct {
		name string
		in   string
		hide []string
		out  string
		ext  Extensions
	}{
		{"postfix",
			"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n" +
				"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
			hideAll,
			"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n" +
				"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHU*KING\r\n",
			Extensions{Pipelining: true, StartTLS: true, Enhanced: true, Chunking: true, Size: true, SizeMax: 10240000}},
		{"exchange",
			"250-ex.example Hello [192.0.2.1]\r\n250-SIZE\r\n250-PIPELINING\r\n250-BINARYMIME\r\n250-CHUNKING\r\n" +
				"250-XEXCH50\r\n250-AUTH NTLM LOGIN\r\n250-AUTH=LOGIN\r\n250 XCLIENT ADDR NAME\r\n",
			hideAll,
			"250-ex.example Hello [192.0.2.1]\r\n250-SIZE\r\n250-PIPELINING\r\n250-BIN*RYMIME\r\n250-CHU*KING\r\n" +
				"250-XEX*H50\r\n250-AUTH NTLM LOGIN\r\n250-AUTH=LOGIN\r\n250 XCL*ENT ADDR NAME\r\n",
			Extensions{Pipelining: true, Auth: true, Chunking: true, BinaryMIME: true, XExch50: true, XClient: true,
				Size: true, AuthMechs: []string{"NTLM", "LOGIN"}}},
		{"old AUTH= form only",
			"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 OK\r\n", hideAll,
			"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 OK\r\n",
			Extensions{Auth: true, AuthMechs: []string{"LOGIN", "PLAIN"}}},
		{"keywords any case, bare LF",
			"250-mx\n250-chunking\n250-Pipelining\n250-starttls\n250-xclient addr\n250 binarymime\n", hideAll,
			"250-mx\n250-chu*king\n250-Pipelining\n250-starttls\n250-xcl*ent addr\n250 bin*rymime\n",
			Extensions{Pipelining: true, StartTLS: true, Chunking: true, BinaryMIME: true, XClient: true}},
		{"hide names any case",
			"250-mx\r\n250 CHUNKING\r\n", []string{"chunking"},
			"250-mx\r\n250 CHU*KING\r\n", Extensions{Chunking: true}},
		{"XCLIENT kept when not asked",
			"250-mx\r\n250-XCLIENT NAME ADDR\r\n250 CHUNKING\r\n", []string{"CHUNKING"},
			"250-mx\r\n250-XCLIENT NAME ADDR\r\n250 CHU*KING\r\n", Extensions{Chunking: true, XClient: true}},
		{"first line untouched",
			"250-CHUNKING\r\n250 SIZE\r\n", hideAll,
			"250-CHUNKING\r\n250 SIZE\r\n", Extensions{Size: true}},
		{"no hide list",
			"250-mx\r\n250 CHUNKING\r\n", nil,
			"250-mx\r\n250 CHUNKING\r\n", Extensions{Chunking: true}},
		{"prefix of a keyword is not it",
			"250-mx\r\n250-CHUNKINGX\r\n250-XCLIENTS\r\n250 SIZEX\r\n", hideAll,
			"250-mx\r\n250-CHUNKINGX\r\n250-XCLIENTS\r\n250 SIZEX\r\n", Extensions{}},
		{"single line", "250 mx\r\n", hideAll, "250 mx\r\n", Extensions{}},
		{"bare code lines", "250-mx\r\n250-\r\n250\r\n", hideAll, "250-mx\r\n250-\r\n250\r\n", Extensions{}},
		{"not 250", "502-no\r\n502 CHUNKING\r\n", hideAll, "502-no\r\n502 CHUNKING\r\n", Extensions{}},
		{"AUTH twice, mechs merged",
			"250-mx\r\n250-AUTH PLAIN LOGIN\r\n250 AUTH=login CRAM-MD5\r\n", hideAll,
			"250-mx\r\n250-AUTH PLAIN LOGIN\r\n250 AUTH=login CRAM-MD5\r\n",
			Extensions{Auth: true, AuthMechs: []string{"PLAIN", "LOGIN", "CRAM-MD5"}}},
		{"SIZE 0", "250-mx\r\n250 SIZE 0\r\n", nil, "250-mx\r\n250 SIZE 0\r\n", Extensions{Size: true}},
		{"AUTH hidden on request",
			"250-mx\r\n250-AUTH PLAIN\r\n250 AUTH=PLAIN\r\n", []string{"AUTH"},
			"250-mx\r\n250-AUT* PLAIN\r\n250 AUT*=PLAIN\r\n", Extensions{Auth: true, AuthMechs: []string{"PLAIN"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := readReply(t, tt.in)
			var lens []int
			for _, l := range r.Lines {
				lens = append(lens, len(l))
			}
			ext := RewriteEHLO(r, tt.hide)
			if !reflect.DeepEqual(ext, tt.ext) {
				t.Errorf("extensions: got %+v, want %+v", ext, tt.ext)
			}
			if got := string(r.Raw()); got != tt.out {
				t.Errorf("rewritten: got %q, want %q", got, tt.out)
			}
			for i, l := range r.Lines {
				if len(l) != lens[i] {
					t.Errorf("line %d: got length %d, want %d", i, len(l), lens[i])
				}
			}
		})
	}
}
