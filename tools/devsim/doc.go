// Package devsim simulates a fleet of devices in one process: each simulated
// device has its own identity (keys made as firmware/identity makes them,
// joined through fleetd's real join API with one multi-use token) and runs a
// real firmware/tunnel client over its own UDP socket, so fleetd sees what
// it would see from that many edge-agents. The devices serve no streams:
// they refuse every brokered connection.
//
//	sim, err := devsim.New(devsim.Config{Fleet: addr, Token: join, Count: 1000, DataDir: dir})
//	go sim.Run(ctx)
//	err = sim.WaitUp(ctx, 1000)
//	evs := sim.Events() // every dial, tunnel up and tunnel down, timed
//
// Identities are kept as one JSON file per device in DataDir, so a second
// run with the same directory reconnects the same devices without joining
// again. With Config.CheckIn set, the devices are direct nodes instead
// (edge-agent --mode=direct): their hello names where they listen, and
// their tunnel comes up only to check in, every CheckIn.
//
// The package also measures what a fleetd restart does to a fleet
// (MeasureRestart): it starts a real fleetd, joins simulated devices,
// restarts fleetd on the same port and data directory, and reports how the
// devices' reconnects spread out in time, whether they come as a
// synchronised storm, and fleetd's memory with the devices connected.
// MeasureCost measures what a held reverse tunnel costs fleetd (memory,
// CPU, wake-ups) against a direct node, per device. MeasureReplicas runs
// the devices over fleetd replicas on a real 3-member etcd cluster
// (tools/etcdcluster), each simulator process behind its own balancer
// (tools/balancer, in a devsim balance process): each replica's memory and
// idle CPU, and how the devices come back after one replica is killed and
// after every replica restarts.
//
// It is a developer tool: tools/cmd/devsim and the benchmarks under
// tools/bench import it; product code (firmware/, fleet/, proto/) must not.
// It imports firmware/identity and firmware/tunnel (a simulated device is
// the agent's own tunnel client), proto/..., and fleet/client for the admin
// API, never fleet's server packages.
package devsim
