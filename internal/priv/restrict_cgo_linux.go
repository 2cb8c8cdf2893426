//go:build linux && cgo

package priv

/*
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>

#ifndef PR_SET_NO_NEW_PRIVS
#define PR_SET_NO_NEW_PRIVS 38
#endif

// -1: not a child; 0: restricted; otherwise the errno of the step that
// failed, named by smtpgated_restrict_step.
static int smtpgated_restrict_errno = -1;
static const char *smtpgated_restrict_step = "";

// Runs before the Go runtime starts its threads, so what it sets is
// inherited by every thread of a child process (the daemon executed with
// -child ROLE): no new privileges, and an empty capability bounding set.
__attribute__((constructor)) static void smtpgated_restrict(int argc, char **argv, char **envp) {
	int child = 0;
	(void)envp;
	for (int i = 1; i < argc && argv != NULL && argv[i] != NULL; i++) {
		if (strcmp(argv[i], "-child") == 0 || strcmp(argv[i], "--child") == 0) {
			child = 1;
		}
	}
	if (!child) {
		return;
	}
	smtpgated_restrict_errno = 0;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		smtpgated_restrict_errno = errno;
		smtpgated_restrict_step = "PR_SET_NO_NEW_PRIVS";
		return;
	}
	for (int cap = 0; cap < 64; cap++) {
		int in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
		if (in < 0) {
			break; // past the kernel's last capability
		}
		if (in == 1 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
			smtpgated_restrict_errno = errno;
			smtpgated_restrict_step = "PR_CAPBSET_DROP";
			return;
		}
	}
}

static int smtpgated_restrict_result(const char **step) {
	*step = smtpgated_restrict_step;
	return smtpgated_restrict_errno;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"syscall"
)

// Restrict reports what the C constructor did when the process started:
// PR_SET_NO_NEW_PRIVS and an empty capability bounding set for every
// thread of a child process.
func Restrict() error {
	var step *C.char
	e := int(C.smtpgated_restrict_result(&step))
	switch e {
	case 0:
		return nil
	case -1:
		return errors.New("not started as a child process (-child): no restriction applied")
	}
	return fmt.Errorf("%s: %w", C.GoString(step), syscall.Errno(e))
}
