//go:build !linux

package priv

// Restrict does nothing outside Linux: the BSDs' confinement is
// internal/confine's (pledge and unveil, Capsicum).
func Restrict() error { return nil }
