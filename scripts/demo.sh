#!/usr/bin/env bash
# make demo: the whole system on one machine, end to end.
#
#   scripts/demo.sh [DEMO_SOURCE] [extra `camveil run` arguments]
#
# 1. a provisioning station (camveil station init out/demo/station): CA, broker, backend and
#    operator keys, and the broker configuration (TLS, client certificates, ACL);
# 2. mosquitto from that configuration, on a free local port;
# 3. the unit provisioned like a real one: `camveil provision-listen` (unit side) and
#    `camveil provision` (station side) over a pseudo-terminal pair (socat), USB serial style;
# 4. the fleet dashboard (`camveil dashboard`: ingest + web page; it receipts what it stores,
#    so the unit forgets an envelope only when the backend has it), a few simulated units
#    (`camveil simulate`), and `camveil listen` as an observer (JSON lines, no receipts);
# 5. the agent (`camveil run`) on a replay camera of DEMO_SOURCE (a video; without one, real
#    photos from scikit-image), with a snapshot command sent by the operator midway;
# 6. a summary: events received by type, lost and duplicated (both must be 0). On a terminal
#    the broker, dashboard and simulated units then stay up until Ctrl-C (DEMO_HOLD=0: stop).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BIN="$VENV/bin"
OUT=${DEMO_OUT:-out/demo}
FRAMES=${DEMO_FRAMES:-400}
SIM_UNITS=${DEMO_SIM_UNITS:-3}
SOURCE=${1:-}
shift || true
if [ -t 0 ] && [ -t 1 ]; then HOLD=${DEMO_HOLD:-1}; else HOLD=${DEMO_HOLD:-0}; fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/station" "$OUT/station-sim" "$OUT/unit" "$OUT/events.jsonl" "$OUT/snapshots" \
  "$OUT/listen.db" "$OUT/dashboard.db" "$OUT"/dashboard.db-* "$OUT/operator-acks.txt" "$OUT/pki"
ST="$OUT/station"

PORT=$(free_port)
DASH_PORT=${DEMO_DASHBOARD_PORT:-$(free_port)}
"$BIN/camveil" station init "$ST" --broker-url "mqtts://127.0.0.1:$PORT" \
  --backend dashboard --backend listen >"$OUT/station-init.log"
echo "demo: station in $ST (throw-away keys), broker on 127.0.0.1:$PORT"

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
(cd "$ST/broker" && exec "$MOSQUITTO" -c "$ST/broker/mosquitto.conf") >"$OUT/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

# USB serial, as at an install: a pseudo-terminal pair stands for the cable
socat pty,raw,echo=0,link="$OUT/tty-unit" pty,raw,echo=0,link="$OUT/tty-station" 2>"$OUT/socat.log" &
pids+=($!)
for _ in $(seq 50); do [ -e "$OUT/tty-unit" ] && [ -e "$OUT/tty-station" ] && break; sleep 0.1; done
"$BIN/camveil" provision-listen --port "$OUT/tty-unit" --state "$OUT/unit" --linger 1 \
  >"$OUT/provision-unit.log" 2>&1 &
UNIT_SIDE=$!
"$BIN/camveil" provision --port "$OUT/tty-station" --station "$ST" --site demo \
  >"$OUT/provision.log" 2>&1 || { cat "$OUT/provision.log" "$OUT/provision-unit.log" >&2; exit 1; }
wait "$UNIT_SIDE" || true
DEVICE=$("$BIN/python" -c 'import sys; from agent.unitstate import UnitState; print(UnitState.load(sys.argv[1]).device_id)' "$OUT/unit")
echo "demo: unit $DEVICE provisioned over a serial line (its keys were made on it, never sent)"

# simulated units: provisioned with the station first, so every backend trusts them from the start
"$BIN/camveil" simulate --units "$SIM_UNITS" --station "$ST" --duration 1 >"$OUT/simulate.log" 2>&1
"$BIN/camveil" simulate --units "$SIM_UNITS" --station "$ST" --rate 0.5 --snapshot-every 5 \
  >>"$OUT/simulate.log" 2>&1 &
pids+=($!)
echo "demo: $SIM_UNITS simulated units (camveil simulate) publishing sealed events"

"$BIN/camveil" dashboard --station "$ST" --port "$DASH_PORT" --store "$OUT/dashboard.db" \
  >"$OUT/dashboard.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do grep -q "http://" "$OUT/dashboard.log" 2>/dev/null && break; sleep 0.1; done
LOGIN=$(grep -o "operator admin, password [^ ]*" "$OUT/dashboard.log" | head -1 || true)
echo "demo: dashboard on http://127.0.0.1:$DASH_PORT (${LOGIN:-see $OUT/dashboard.log})"

if [ -n "$SOURCE" ] && [ -e "$SOURCE" ]; then
  SOURCE=$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")
  PACING="realtime = false"   # as fast as the detector goes
  echo "demo: camera = replay of $SOURCE (first $FRAMES frames)"
else
  SOURCE=$("$BIN/python" -c 'from pathlib import Path; from camveil.cli.run import _demo_photos; print(_demo_photos(Path("'"$OUT"'/photos")))')
  PACING=$'loop = true\nrealtime = true\nfps = 10.0'   # 40 photos, looped at 10 fps
  FRAMES=${DEMO_FRAMES:-200}
  echo "demo: camera = replay of real photos in $SOURCE ($FRAMES frames at 10 fps)"
fi

cat >"$OUT/camveil.toml" <<EOF
# written by scripts/demo.sh
[camera]
kind = "replay"
source = "$SOURCE"
$PACING

[mqtt]
enabled = true
state_dir = "$OUT/unit"

[events]
presence_window_s = 3.0
health_interval_s = 5.0
EOF

echo "demo: observer (camveil listen, no receipts) -> $OUT/events.jsonl"
: >"$OUT/events.jsonl"
"$BIN/camveil" listen --broker "mqtts://127.0.0.1:$PORT" --ca "$ST/ca/ca.crt" \
  --cert "$ST/clients/backend-listen.crt" --key "$ST/clients/backend-listen.key" \
  --identity "$ST/backend.key" --devices "$ST/devices.cbor" --no-share --no-receipts \
  --db "$OUT/listen.db" --snapshots "$OUT/snapshots" --duration 150 \
  >"$OUT/events.jsonl" 2>"$OUT/listen.err" &
LISTEN=$!
pids+=($LISTEN)
# show the unit's events as they arrive, shortened to one line (tail ends with the listener)
tail -n +1 -f --pid="$LISTEN" "$OUT/events.jsonl" 2>/dev/null |
  awk -v dev="\"$DEVICE\"" 'index($0, dev) { print "  event: " substr($0, 1, 150); fflush() }' &
VIEWER=$!
for _ in $(seq 100); do grep -q subscribed "$OUT/listen.err" 2>/dev/null && break; sleep 0.1; done

echo "demo: agent (camveil run --config $OUT/camveil.toml)"
"$BIN/camveil" run --config "$OUT/camveil.toml" --frames "$FRAMES" "$@" >"$OUT/agent-summary.json" &
AGENT=$!
pids+=($AGENT)

# the operator asks for a snapshot once the unit is online (signed, encrypted, expiring)
"$BIN/python" - "$ST" "$PORT" "$OUT/events.jsonl" "$DEVICE" <<'EOF' || echo "demo: snapshot command not sent"
import ssl, sys, time
from pathlib import Path
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from contract.commands import seal_command
from contract.envelope.keys import ack_reader, load_identity, load_peers
from contract.topics import ack_topic
from dashboard.listener import MemoryDedupe, Opener

root, port, events, device_id = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + 30
while not any(device_id in line and '"state": "online"' in line
              for line in events.read_text().splitlines()) and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(1.0)  # a frame or two through the pipeline
operator = load_identity(root / "operator.key")
peers = load_peers(root / "devices.cbor")
device = peers.require(device_id)
# acks are sealed to the operator (the backend cannot open them): read the ack as `camveil cmd` does
opener = Opener(ack_reader(operator), peers, MemoryDedupe())
acks = []
def on_message(client, userdata, message):
    received = opener.open(message.topic, message.payload)
    if received is not None:
        acks.append(received.seq)
cmd = seal_command("snapshot", command_id="demo-snap-1", device=device, operator=operator,
                   seq=int(time.time() * 1000), expires_at=int(time.time()) + 60)
cert = next((root / "clients").glob("operator-*.crt"))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(root / "ca" / "ca.crt")
ctx.load_cert_chain(cert, cert.with_suffix(".key"))
client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
client.tls_set_context(ctx)
client.on_message = on_message
client.connect("127.0.0.1", port)
client.loop_start()
client.subscribe(ack_topic(device.kid), qos=1)
time.sleep(0.5)
client.publish(cmd.topic, cmd.data, qos=1).wait_for_publish(10)
deadline = time.monotonic() + 15
while not acks and time.monotonic() < deadline:
    time.sleep(0.1)
(events.parent / "operator-acks.txt").write_text("".join(f"{s}\n" for s in acks))
client.disconnect()
client.loop_stop()
print("demo: operator sent a signed snapshot command (id demo-snap-1)")
EOF

wait "$AGENT"
# the unit's last will ("offline") is the last thing the observer needs
for _ in $(seq 100); do
  grep "\"$DEVICE\"" "$OUT/events.jsonl" | grep -q '"state": "offline"' && break
  sleep 0.1
done
sleep 0.5
kill "$LISTEN" 2>/dev/null || true
wait "$LISTEN" 2>/dev/null || true
wait "$VIEWER" 2>/dev/null || true

STATUS=0
"$BIN/python" - "$OUT" <<'EOF' || STATUS=$?
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
agent = json.loads(out.joinpath("agent-summary.json").read_text().strip().splitlines()[-1])["summary"]
listen = next(json.loads(l)["listen_summary"] for l in reversed(out.joinpath("listen.err").read_text().splitlines()) if l.startswith("{"))
sent = {s for a, b in agent["enqueued_seqs"] for s in range(a, b + 1)}
got = {s for a, b in listen["seqs"].get(agent["device"], []) for s in range(a, b + 1)}
acks_file = out / "operator-acks.txt"  # acks go to the operator, not the backend
acks = {int(x) for x in acks_file.read_text().split()} if acks_file.exists() else set()
got |= acks
lost = sorted(sent - got)
print()
print(f"demo summary ({agent['device']}):")
print(f"  frames: {agent['frames_out']} of {agent['frames_in']} redacted; dropped {agent['dropped'] or 'none'}")
print(f"  agent enqueued {agent['enqueued']} sealed envelopes {agent['events']}, acked by the broker {agent['acked']}, left in the outbox {agent['outbox_depth']} (forgotten only on the dashboard's receipts)")
mine = {s for a, b in listen["seqs"].get(agent["device"], []) for s in range(a, b + 1)}
print(f"  observer received {len(mine)} of the unit's envelopes (incl. the last will); all units: {listen['by_type']}")
print(f"  operator received {len(acks)} sealed command ack(s)")
print(f"  lost: {len(lost)}   duplicated: {listen['duplicates']}   bad: {listen['bad'] or 0}")
snaps = sorted((out / "snapshots").glob("*.jpg")) if (out / "snapshots").exists() else []
if snaps:
    print(f"  redacted snapshots ({len(snaps)} JPEGs, decrypted by the listener): {out / 'snapshots'}/")
print(f"  events: {out / 'events.jsonl'}")
sys.exit(1 if lost or listen["duplicates"] else 0)
EOF

if [ "$HOLD" = "1" ]; then
  echo
  echo "demo: the dashboard stays up: http://127.0.0.1:$DASH_PORT (${LOGIN:-see $OUT/dashboard.log})"
  echo "demo: broker and simulated units keep running; Ctrl-C stops everything"
  while true; do sleep 3600; done
fi
exit "${STATUS:-0}"
