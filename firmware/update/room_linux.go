package update

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// roomFor fails unless the file system of dir has need bytes available
// to unprivileged writers: the agent runs as root, but an update must not
// eat the blocks reserved for root.
func roomFor(dir string, need int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free < need {
		return fmt.Errorf("%s has %d bytes free, the update needs %d: free some space on the device", dir, free, need)
	}
	return nil
}
