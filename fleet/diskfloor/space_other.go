//go:build !linux

package diskfloor

import "errors"

// space is not known off Linux: the floor is not kept there.
func space(dir string) (free, total uint64, err error) {
	return 0, 0, errors.New("diskfloor: free space is only read on Linux")
}
