package diskfloor

import "golang.org/x/sys/unix"

// space asks the kernel how much of dir's file system is free for an
// unprivileged writer (fleetd may run as root: the blocks reserved for
// root are not counted as free, so the floor holds for everyone).
func space(dir string) (free, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}
