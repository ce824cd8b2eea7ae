#!/usr/bin/env bash
# The benchmarks: runs each benchmark command in the list below that exists
# under tools/bench/ (make bench calls this). Each prints its figures as
# Markdown on stdout and its progress on stderr; docs/benchmarks.md holds
# dated copies of the figures.
#
#   bash tools/bench/run.sh              every benchmark in the list
#   bash tools/bench/run.sh sshbench     only the ones named (a missing one fails)
#
# Adding a benchmark: create tools/bench/NAME (a Go command) and add NAME to
# the list. A failing benchmark does not stop the others; the script fails
# at the end if any failed.
set -euo pipefail
cd "$(dirname "$0")/../.."

benchmarks=(
  sshbench # SSH through the fleet vs OpenSSH sshd: scp throughput, exec round trip, idle RSS
  auditbench # audit: queue writes with fsync batching, a 100,000-event backlog drained, bytes per event
  loginbench # a flood of logins from 256 addresses: guesses/s it gets, a real user's login latency during it, defences on and off (~1 min)
  linkbench # through linksim, vs an OpenSSH reverse tunnel: blackout recovery, lossy throughput, idle bytes/day, connect RTTs (~13 min)
  armbench # agent binary size per target (raw, gzip, xz), idle RSS and CPU and start-to-tunnel time, native and arm64 under qemu (~2 min)
  kube # kubectl get latency and watch delay through the fleet vs straight to the API server (a Go test in tools/e2e)
  store # the bbolt and etcd stores side by side: Get/Put/CAS latency, watch delay between replicas, store copy (a Go test in fleet/store/etcdstore)
  dashpeer # a peer's dashboard (Syncthing's GUI, Debian's syncthing) in Chromium: page weight by type, requests, first paint, to set beside the dashboard's (~10 s)
  dashboard # the dashboard with 10,000 simulated devices in Chromium: first paint, interactive, page weight, fleetd CPU per live dashboard (a Go test in tools/e2e; ~20 min)
  replicas # three fleetd replicas on etcd: exec round trip and download through a peer replica vs the replica holding the tunnel, a device's failover when its replica is killed (a Go test in tools/e2e)
  locks # three fleetd replicas on etcd: lock-to-termination latency p50/p99 of OpenSSH sessions on the lock's replica and another (a Go test in tools/e2e; ~20 s)
  appbench # web apps through the fleet vs direct vs nginx: small GET p50/p99 and requests/s, 1 GiB download, websocket round trip, memory per app session (~2 min)
  trustbench # trusted clusters: tsh exec round trip and scp throughput through root → leaf → device against leaf → device (~2 min)
)
named=$#
if ((named)); then benchmarks=("$@"); fi

failed=()
for b in "${benchmarks[@]}"; do
  if [ "$b" != kube ] && [ "$b" != store ] && [ "$b" != dashboard ] && [ "$b" != replicas ] && [ "$b" != locks ] && [ ! -d "tools/bench/$b" ]; then
    echo "=== bench: $b: no tools/bench/$b, skipped" >&2
    if ((named)); then failed+=("$b"); fi
    continue
  fi
  echo "=== bench: $b" >&2
  if [ "$b" = appbench ] && ! command -v nginx >/dev/null; then
    # Only this benchmark uses nginx (a reverse proxy to compare with).
    echo "=== bench: installing nginx-light for appbench" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; } >&2 || echo "=== bench: nginx not installed; appbench runs without it" >&2
  fi
  if [ "$b" = dashpeer ] && ! command -v syncthing >/dev/null; then
    # Only this benchmark uses Syncthing (the peer dashboard it measures).
    echo "=== bench: installing syncthing for dashpeer" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq syncthing; } >&2 || echo "=== bench: syncthing not installed; dashpeer fails" >&2
  fi
  if [ "$b" = kube ]; then
    KUBE_BENCH_N=300 go test -count=1 -v -run TestKubeBenchmark ./tools/e2e || failed+=("$b")
    continue
  fi
  if [ "$b" = dashboard ]; then
    DASH_BENCH_DEVICES=10000 DASH_BENCH_PROCS=4 DASH_BENCH_DASHBOARDS=4 DASH_BENCH_WINDOW=60s \
      go test -count=1 -v -timeout 2h -run TestDashboardBenchmark ./tools/e2e || failed+=("$b")
    continue
  fi
  if [ "$b" = replicas ]; then
    REPLICA_BENCH_N=30 go test -count=1 -v -run TestReplicasBenchmark ./tools/e2e || failed+=("$b")
    continue
  fi
  if [ "$b" = locks ]; then
    LOCK_BENCH_N=100 go test -count=1 -v -run TestLocksBenchmark ./tools/e2e || failed+=("$b")
    continue
  fi
  if [ "$b" = store ]; then
    STORE_BENCH_N=300 go test -count=1 -v -run TestStoreBenchmark ./fleet/store/etcdstore || failed+=("$b")
    continue
  fi
  go run "./tools/bench/$b" || failed+=("$b")
done
if ((${#failed[@]})); then
  echo "bench: FAILED: ${failed[*]}" >&2
  exit 1
fi
