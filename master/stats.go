package master

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// statsText is `smtpgatectl stats`: the counters as flat key: value lines.
func statsText(w io.Writer, s *snapshot) {
	flat(w, s, false)
	var names []string
	for n := range s.Restarts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "restarts.%s: %d\n", strings.ReplaceAll(n, " ", ""), s.Restarts[n])
	}
}

// prometheus is `smtpgatectl stats --prometheus`: the counters in the
// Prometheus text exposition format (version 0.0.4), for node exporter's
// textfile collector: every metric has # HELP and # TYPE, names start
// with smtpgated_, the text ends with a newline.
func prometheus(w io.Writer, s *snapshot) {
	metric := func(name, typ, help string, samples ...string) {
		fmt.Fprintf(w, "# HELP smtpgated_%s %s\n# TYPE smtpgated_%s %s\n", name, help, name, typ)
		for _, smp := range samples {
			fmt.Fprintf(w, "smtpgated_%s%s\n", name, smp)
		}
	}
	val := func(v any) string { return fmt.Sprintf(" %v", v) }
	lab := func(k, v string, n any) string { return fmt.Sprintf("{%s=%q} %v", k, v, n) }

	metric("start_time_seconds", "gauge", "Unix time the daemon started.", val(s.Started.Unix()))
	metric("reload_time_seconds", "gauge", "Unix time of the last configuration reload (the start if none).", val(s.Reloaded.Unix()))
	metric("sessions", "gauge", "Sessions open now.", val(s.Current))
	metric("sessions_max", "gauge", "max_connections.", val(s.Limit))
	metric("requests_total", "counter", "Connections accepted.", val(s.Requests))
	metric("direct_sessions_total", "counter", "Sessions that ended as a direct proxy (STARTTLS, auth_skip direct).", val(s.Direct))
	metric("empty_sessions_total", "counter", "Sessions that ended without a mail transaction.", val(s.Empty))
	metric("found_total", "counter", "Messages refused for a virus, and messages found spam (refused or passed, per lock_on).",
		lab("kind", "virus", s.Viruses), lab("kind", "spam", s.Spam))
	var rej []string
	for i, k := range rejectKinds {
		rej = append(rej, lab("cause", k, s.Rejects[i]))
	}
	metric("rejects_total", "counter", "Connections refused, by cause.", rej...)
	var causes []string
	for by := range s.Closes {
		causes = append(causes, by)
	}
	sort.Strings(causes)
	var closed []string
	for _, by := range causes {
		closed = append(closed, lab("by", by, s.Closes[by]))
	}
	metric("sessions_closed_total", "counter", "Sessions ended, by the by= cause of their CLOSE line.", closed...)
	metric("received_bytes_total", "counter", "Bytes received in sessions that ended, from the client and from the server.",
		lab("from", "client", s.ClientBytes), lab("from", "server", s.ServerBytes))
	metric("lost_sessions_total", "counter", "Sessions lost because their worker died.", val(s.Lost))
	var names []string
	for n := range s.Restarts {
		names = append(names, n)
	}
	sort.Strings(names)
	var rs []string
	for _, n := range names {
		rs = append(rs, lab("process", n, s.Restarts[n]))
	}
	metric("process_restarts_total", "counter", "Restarts of each child process.", rs...)
}
