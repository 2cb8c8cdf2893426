module smtp-gated

go 1.26.0

require (
	blitiri.com.ar/go/spf v1.6.0
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/miekg/dns v1.1.73
	github.com/vmihailenco/msgpack/v5 v5.4.1
	golang.org/x/sys v0.49.0
)

require (
	github.com/vmihailenco/tagparser/v2 v2.0.0 // indirect
	golang.org/x/net v0.57.0 // indirect
)
