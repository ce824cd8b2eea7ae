//go:build !linux

package netwatch

import (
	"context"
	"errors"
)

func watch(ctx context.Context, events chan<- struct{}) error {
	return errors.New("netwatch: not supported on this system")
}
