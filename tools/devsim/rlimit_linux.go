package devsim

import (
	"fmt"
	"syscall"
)

// raiseFileLimit raises the soft RLIMIT_NOFILE to at least need (up to the
// hard limit; Go already raises it to the hard limit at start-up on most
// systems) and fails when the hard limit is below need.
func raiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	if lim.Max < uint64(need) {
		return fmt.Errorf("open-file limit %d (hard) is below the %d this run needs: raise it (ulimit -Hn, or LimitNOFILE= under systemd) or simulate fewer devices", lim.Max, need)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise the open-file limit to %d: %w", lim.Max, err)
	}
	return nil
}
