// Package harness starts the system for tests and benchmarks: fleetd in a
// data directory of its own, device agents joined with fresh tokens, tsh
// users logged in, Debian's sshd on a loopback port, and any other process,
// each with its output captured line by line and its clean-up built in.
//
// Everything it starts is stopped by a clean-up registered with the TB it
// was started with: gracefully (SIGTERM to the process group), then killed
// after a timeout. A test passes its *testing.T or *testing.B; a benchmark
// command, which is not a test, gets a TB from Do, whose clean-ups run when
// its function returns. On Linux every child is also killed when this
// process dies, so an interrupted run leaves nothing behind.
//
// Methods that can fail come in two forms, after the testing convention:
// X fails the TB (tb.Fatalf) and XErr returns the error, for callers that
// expect failure or run outside the TB's goroutine.
//
// Test helpers of tools/e2e map onto it as: startFleet → StartFleet,
// f.ctl/ctlErr → Ctl/CtlErr, f.addUser → AddUser, f.token → Token,
// f.startAgent → StartAgent, f.login → Login, u.tsh/tshErr → Tsh/TshErr,
// p.waitLine/waitOutput → WaitLine/WaitOutput, eventually → Eventually,
// exitCode → ExitCode.
//
// It is imported by tests and by the commands under tools/; product code
// never imports it.
package harness
