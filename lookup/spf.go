package lookup

import (
	"context"
	"fmt"
	"net"
	"time"

	"blitiri.com.ar/go/spf"

	"smtp-gated/ipc"
)

// spfCheck evaluates the SPF policy of the sender's domain (the HELO
// name's for the null sender) for q.IP, asking servers, within timeout.
// trace receives the library's steps (for the debug log).
func spfCheck(servers []string, q *ipc.SpfQuery, timeout time.Duration, trace func(string, ...any)) *ipc.SpfAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if !q.IP.IsValid() {
		return &ipc.SpfAnswer{Result: string(spf.PermError), Err: "no address to check"}
	}
	res, err := spf.CheckHostWithSender(net.IP(q.IP.Unmap().AsSlice()), q.Helo, q.Sender,
		spf.WithResolver(fqdnResolver{netResolver(servers)}),
		spf.WithContext(ctx),
		spf.WithTraceFunc(trace))
	a := &ipc.SpfAnswer{Result: string(res)}
	if err != nil {
		a.Err = err.Error()
	}
	if ctx.Err() != nil && res == spf.TempError {
		a.Err = fmt.Sprintf("no answer within %v (%s)", timeout, a.Err)
	}
	return a
}
