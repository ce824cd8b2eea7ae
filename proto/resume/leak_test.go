package resume

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a goroutine outlives the tests: here
// goroutines are the point, and every one must have an owner that stops it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
