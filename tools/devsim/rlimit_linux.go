package devsim

import (
	"fmt"
	"syscall"
)

// raiseFileLimit raises RLIMIT_NOFILE to at least need: the soft limit up
// to the hard one (Go already does that at start-up on most systems), and
// the hard limit too where this process may (root, or CAP_SYS_RESOURCE).
// It fails, saying what to do, when the limit stays below need.
func raiseFileLimit(need int) error { return RaiseFileLimit(need) }

// RaiseFileLimit is raiseFileLimit, for devsim's other processes (its
// balancers).
func RaiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	hard := lim.Max
	if lim.Max < uint64(need) {
		lim.Max = uint64(need)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("the open-file limit (hard: %d) is below the %d this run needs (one a device, and some): "+
			"raise it (ulimit -Hn as root, LimitNOFILE= under systemd), or split the devices over processes "+
			"(each with its own --first and --count): %w", hard, need, err)
	}
	return nil
}
