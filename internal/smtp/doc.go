// Package smtp reads and writes the pieces of an SMTP dialogue: command
// lines, replies, the DATA stream. It does no I/O policy and knows nothing of
// processes.
//
// Everything here works on bytes the caller already has or reads from a
// *bufio.Reader the caller owns; nothing sets deadlines, logs, or keeps state
// beyond a DataFilter's position in one message. Every parser of untrusted
// input (client or MTA) has a fuzz target in fuzz_test.go.
package smtp
