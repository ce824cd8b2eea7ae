package update

import (
	"os"
	"syscall"
)

// Faults for the tests of real agent binaries (tools/e2e, TestOTA*).
//
// Release builds leave testFault empty and none of this does anything.
// Test builds set it with
//
//	-ldflags "-X remoteler.dev/edge/firmware/update.testFault=VALUE"
//
// where VALUE is
//
//   - "crash-at-start": `edge-agent start` panics right after its start-up
//     check (a release that crashes at once);
//   - "no-connect": the agent dials a fleet address where nothing listens
//     (a release that never gets its tunnel up);
//   - "env": the agent kills itself with SIGKILL at the step of an apply
//     named by EDGE_AGENT_TEST_KILL_AT ("prepared", "state-applying",
//     "between-renames", "renamed", "state-trial"), as a power cut would.
var testFault string

// Fault values of testFault.
const (
	FaultCrashAtStart = "crash-at-start"
	FaultNoConnect    = "no-connect"
)

// TestFault returns the test fault this binary was built with; "" in
// every release build.
func TestFault() string { return testFault }

func faultAt(step string) bool {
	return testFault == "env" && os.Getenv("EDGE_AGENT_TEST_KILL_AT") == step
}

// fault kills the process at step when a test asked for it.
func fault(step string) {
	if faultAt(step) {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}
