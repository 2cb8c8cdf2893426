package config

import "time"

// The timeout options as durations. What 0 means is decided here, once
// for every process:
//
//   - timeout_idle and timeout_direct: never 0 (refused when read: 1.4
//     closed every such session at once).
//   - timeout_session and timeout_connect: 0 is no limit of the proxy's
//     own, as in 1.4 (for a connection, the system's own limit).
//   - timeout_lookup, timeout_scanner and timeout_spam: 0 is the default
//     (10 s, 30 s, 30 s). A peer that never answers must not hold a
//     session, or a message, for ever.
//   - timeout_shutdown: 0 is no wait.

// seconds is n seconds, bounded so that the product cannot overflow.
func seconds(n uint64) time.Duration { return time.Duration(min(n, 1<<31)) * time.Second }

// orDefault is n seconds, or def when n is 0.
func orDefault(n uint64, def time.Duration) time.Duration {
	if n == 0 {
		return def
	}
	return seconds(n)
}

// IdleTimeout is timeout_idle: how long a relayed session may be silent.
func (c *Config) IdleTimeout() time.Duration { return seconds(c.TimeoutIdle) }

// DirectTimeout is timeout_direct: how long a direct session may be
// silent.
func (c *Config) DirectTimeout() time.Duration { return seconds(c.TimeoutDirect) }

// SessionTimeout is timeout_session: how long a takeover session may
// last; 0 is no limit.
func (c *Config) SessionTimeout() time.Duration { return seconds(c.TimeoutSession) }

// ConnectTimeout is timeout_connect: how long a connection to the MTA may
// take; 0 is no limit of the proxy's own.
func (c *Config) ConnectTimeout() time.Duration { return seconds(c.TimeoutConnect) }

// LookupTimeout is timeout_lookup: the bound of a remote look-up, a
// DNSBL or an SPF check.
func (c *Config) LookupTimeout() time.Duration { return orDefault(c.TimeoutLookup, 10*time.Second) }

// ScannerTimeout is timeout_scanner: the bound of a virus scan.
func (c *Config) ScannerTimeout() time.Duration { return orDefault(c.TimeoutScanner, 30*time.Second) }

// SpamTimeout is timeout_spam: the bound of a spam scan.
func (c *Config) SpamTimeout() time.Duration { return orDefault(c.TimeoutSpam, 30*time.Second) }

// ShutdownTimeout is timeout_shutdown: how long a stop waits for the
// sessions in progress.
func (c *Config) ShutdownTimeout() time.Duration { return seconds(c.TimeoutShutdown) }

// Deadline is the deadline d from now, or none (the zero time) when d is
// 0, the "no limit" of SessionTimeout and ConnectTimeout.
func Deadline(d time.Duration) time.Time {
	if d == 0 {
		return time.Time{}
	}
	return time.Now().Add(d)
}
