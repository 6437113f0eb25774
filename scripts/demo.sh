#!/usr/bin/env bash
# make demo: the agent publishing sealed events over MQTT to a backend listener, end to end.
#
#   scripts/demo.sh [DEMO_SOURCE] [extra `camveil run` arguments]
#
# 1. throw-away keys (camveil dev-pki out/demo/pki): CA, broker, unit, backend, operator;
# 2. a local mosquitto on a free port with the repo's config (TLS, client certificates, ACL);
# 3. `camveil listen` (backend: verifies, decrypts, de-duplicates; JSON lines -> terminal);
# 4. the agent (`camveil run --config out/demo/camveil.toml`) on a replay camera of DEMO_SOURCE
#    (a video; without one, real photos from scikit-image), with a snapshot command sent by the
#    operator midway;
# 5. a summary: events received by type, lost and duplicated (both must be 0).
# Everything stops by itself (a frame limit) or on Ctrl-C; all processes are cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BIN="$VENV/bin"
OUT=${DEMO_OUT:-out/demo}
FRAMES=${DEMO_FRAMES:-400}
SOURCE=${1:-}
shift || true

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

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/pki" "$OUT/unit-state" "$OUT/events.jsonl" "$OUT/snapshots" "$OUT/listen.db"

PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/camveil" dev-pki "$OUT/pki" --port "$PORT" >/dev/null
echo "demo: dev keys in $OUT/pki (throw-away), broker on 127.0.0.1:$PORT"

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$MOSQUITTO" -c "$OUT/pki/broker/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

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
state_dir = "$OUT/pki/unit"

[events]
presence_window_s = 3.0
health_interval_s = 5.0
EOF

echo "demo: backend listener (camveil listen) -> $OUT/events.jsonl"
: >"$OUT/events.jsonl"
"$BIN/camveil" listen --dev-pki "$OUT/pki" --db "$OUT/listen.db" --snapshots "$OUT/snapshots" \
  --until-offline --duration 150 >"$OUT/events.jsonl" 2>"$OUT/listen.err" &
LISTEN=$!
pids+=($LISTEN)
# show each event as it arrives, shortened to one line (tail ends with the listener)
tail -n +1 -f --pid="$LISTEN" "$OUT/events.jsonl" 2>/dev/null |
  awk '{ print "  event: " substr($0, 1, 150); fflush() }' &
VIEWER=$!
for _ in $(seq 100); do grep -q subscribed "$OUT/listen.err" 2>/dev/null && break; sleep 0.1; done

echo "demo: agent (camveil run --config $OUT/camveil.toml)"
"$BIN/camveil" run --config "$OUT/camveil.toml" --frames "$FRAMES" "$@" >"$OUT/agent-summary.json" &
AGENT=$!
pids+=($AGENT)

# the operator asks for a snapshot once the unit is online (signed, encrypted, expiring)
"$BIN/python" - "$OUT/pki" "$PORT" "$OUT/events.jsonl" <<'EOF' || echo "demo: snapshot command not sent"
import ssl, sys, time
from pathlib import Path
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from contract.commands import seal_command
from contract.envelope.keys import ack_reader, load_identity, load_peers
from contract.topics import ack_topic
from dashboard.listener import MemoryDedupe, Opener

root, port, events = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
deadline = time.monotonic() + 30
while '"state": "online"' not in events.read_text() and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(1.0)  # a frame or two through the pipeline
operator = load_identity(root / "operator" / "identity.cbor")
peers = load_peers(root / "backend" / "devices.cbor")
device = next(iter(peers.values()))
# acks are sealed to the operator (the backend cannot open them): read the ack as `camveil cmd` does
opener = Opener(ack_reader(operator), peers, MemoryDedupe())
acks = []
def on_message(client, userdata, message):
    received = opener.open(message.topic, message.payload)
    if received is not None:
        acks.append(received.seq)
cmd = seal_command("snapshot", command_id="demo-snap-1", device=device, operator=operator,
                   seq=int(time.time() * 1000), expires_at=int(time.time()) + 60)
cert = next((root / "operator").glob("operator-*.crt"))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(root / "ca.crt")
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
# the listener ends when the unit's last will ("offline") arrives
for _ in $(seq 200); do kill -0 "$LISTEN" 2>/dev/null || break; sleep 0.1; done
kill "$LISTEN" 2>/dev/null || true
wait "$LISTEN" 2>/dev/null || true
wait "$VIEWER" 2>/dev/null || true

"$BIN/python" - "$OUT" <<'EOF'
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
print(f"  agent enqueued {agent['enqueued']} sealed envelopes {agent['events']}, acked by the broker {agent['acked']}, left in the outbox {agent['outbox_depth']}")
print(f"  listener received {listen['received']} {listen['by_type']} (incl. the last will)")
print(f"  operator received {len(acks)} sealed command ack(s)")
print(f"  lost: {len(lost)}   duplicated: {listen['duplicates']}   bad: {listen['bad'] or 0}")
snaps = sorted((out / "snapshots").glob("*.jpg")) if (out / "snapshots").exists() else []
if snaps:
    print(f"  redacted snapshots ({len(snaps)} JPEGs, decrypted by the listener): {out / 'snapshots'}/")
print(f"  events: {out / 'events.jsonl'}")
sys.exit(1 if lost or listen["duplicates"] else 0)
EOF
