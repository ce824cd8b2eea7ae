#!/usr/bin/env bash
# The main job: a fleet on the embedded bbolt store, a demo user, and a local
# device agent, then the exact commands to try. Ctrl-C stops it all.
# State lives in .demo/ (delete it to start afresh); re-running reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

ADDR="${DEMO_ADDR:-127.0.0.1:3080}"
APP_ADDR="${DEMO_APP_ADDR:-127.0.0.1:8089}"
STATE="$PWD/.demo"
BIN="$PWD/bin"
LOGIN="$(id -un)"
PASSWORD="demo-password-123"

echo "==> building fleetd, edge-agent, tsh, fleetctl and demoapp into bin/"
mkdir -p "$BIN" "$STATE"
go build -o "$BIN/" ./fleet/cmd/fleetd ./fleet/cmd/tsh ./fleet/cmd/fleetctl ./firmware/cmd/edge-agent ./tools/cmd/demoapp

pids=()
cleanup() {
  echo
  echo "==> stopping"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "==> starting fleetd on $ADDR (data in .demo/fleet, logs in .demo/fleetd.log)"
"$BIN/fleetd" start --data-dir "$STATE/fleet" --listen "$ADDR" >"$STATE/fleetd.out" 2>"$STATE/fleetd.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q '^CA pin:' "$STATE/fleetd.out" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$STATE/fleetd.log"; exit 1; }
  sleep 0.1
done
PIN="$(sed -n 's/^CA pin: //p' "$STATE/fleetd.out")"
CTL=("$BIN/fleetctl" --data-dir "$STATE/fleet")

if ! "${CTL[@]}" users ls | grep -q '^demo\b'; then
  echo "==> adding user demo (roles access and admin, login $LOGIN)"
  echo "$PASSWORD" | "${CTL[@]}" users add demo --roles=access,admin --logins="$LOGIN" >/dev/null
fi

if [ ! -f "$STATE/device/agent.db" ]; then
  echo "==> creating a join token and joining device demo-device"
  JOIN="$("${CTL[@]}" tokens add --ttl=10m --uses=1 --labels=env=demo --format=json | sed -n 's/.*"join_string": *"\([^"]*\)".*/\1/p')"
  set -- --fleet "$ADDR" --token "$JOIN"
else
  set --
fi
echo "==> starting the demo web app on $APP_ADDR (the device offers it as app hello)"
"$BIN/demoapp" --listen "$APP_ADDR" >"$STATE/demoapp.out" 2>"$STATE/demoapp.log" &
pids+=($!)
"$BIN/edge-agent" start --data-dir "$STATE/device" --name demo-device --labels site=desk --app "hello=http://$APP_ADDR,label:kind=demo" "$@" 2>"$STATE/agent.log" &
pids+=($!)
for _ in $(seq 100); do
  "${CTL[@]}" devices ls 2>/dev/null | grep -q 'demo-device.*online' && break
  kill -0 "${pids[2]}" 2>/dev/null || { cat "$STATE/agent.log"; exit 1; }
  sleep 0.1
done

export TSH_HOME="$STATE/tsh"
echo "$PASSWORD" | "$BIN/tsh" login --proxy="$ADDR" --user=demo --ca-pin="$PIN" >/dev/null
APP_URL="$("${CTL[@]}" apps ls --format=json | sed -n 's/.*"public_addr": *"\([^"]*\)".*/\1/p' | head -1)"

cat <<MSG

Remoteler edge demo is running: fleet "fleet" on $ADDR, device demo-device online.

Dashboard: https://localhost:${ADDR##*:}/web/
  log in as demo, password $PASSWORD (your browser will warn about the
  fleet's certificate, which its own CA signed: accept it for the demo)

User demo is logged in with tsh too. In another terminal:

  export TSH_HOME=$STATE/tsh PATH=$BIN:\$PATH
  tsh status
  tsh ls
  tsh ssh demo-device                     # interactive shell as $LOGIN
  tsh ssh demo-device uname -a            # one command; its exit status comes back
  tsh scp README.md demo-device:/tmp/     # copy a file

Plain OpenSSH through the fleet:
  tsh config > $STATE/ssh_config
  ssh -F $STATE/ssh_config $LOGIN@demo-device.fleet
  scp -F $STATE/ssh_config README.md $LOGIN@demo-device.fleet:/tmp/

The device's web app, with a live event stream and a websocket echo:
  open $APP_URL/ in a browser and log in as demo / $PASSWORD
  (its name ends in .localhost, which browsers send to this machine; the
  certificate is the fleet's own CA's, so the browser asks you to trust it)
  tsh apps ls
  tsh apps login hello && tsh proxy app hello --port=8080   # then: curl http://127.0.0.1:8080/whoami

Admin:
  fleetctl --data-dir $STATE/fleet status
  fleetctl --data-dir $STATE/fleet apps ls
  fleetctl --data-dir $STATE/fleet devices ls
  fleetctl --data-dir $STATE/fleet tokens add --labels=site=lab

Logs: $STATE/fleetd.log, $STATE/agent.log and $STATE/demoapp.log. Ctrl-C stops the demo.
MSG
wait -n "${pids[@]}"
