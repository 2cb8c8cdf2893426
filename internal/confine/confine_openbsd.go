//go:build openbsd

package confine

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
)

// apply unveils the rule's paths, locks unveil, then pledges.
func apply(r *Rule, cfg *config.Config, paths map[string]string) (string, error) {
	var done []string
	unveiled := map[string]string{}
	for _, p := range r.Unveil {
		path := paths[p.Name]
		if path == "" {
			continue
		}
		err := unix.Unveil(path, p.Perm)
		if errors.Is(err, unix.ENOENT) {
			done = append(done, path+" (missing, not unveiled)")
			continue
		}
		if err != nil {
			return "", fmt.Errorf("unveil %s %s: %w", path, p.Perm, err)
		}
		done = append(done, path+" "+p.Perm)
		unveiled[p.Name] = path
	}
	if err := unix.UnveilBlock(); err != nil {
		return "", fmt.Errorf("unveil: %w", err)
	}
	// Programs the role executes (lockd's action_script) are not
	// pledged: execpromises is left as it is.
	if err := unix.PledgePromises(r.Pledge); err != nil {
		return "", fmt.Errorf("pledge %q: %w", r.Pledge, err)
	}
	applied.rule, applied.unveiled = r, unveiled
	if len(done) == 0 {
		done = []string{"nothing"}
	}
	return fmt.Sprintf("pledge %q, unveiled %s", r.Pledge, strings.Join(done, ", ")), nil
}
