// Package e2e holds the end-to-end tests: they build fleetd, edge-agent, tsh
// and fleetctl, run them as real processes on loopback, and drive them with
// real clients (OpenSSH ssh, scp and sftp). It has no production code.
package e2e
