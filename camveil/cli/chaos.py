"""`camveil chaos --events N --broker-restarts R --agent-kills K [--rate EV_PER_S] [--seed S]
[--json] [--broker URL --pki DIR]`: delivery under broker restarts and unit crashes.

Without ``--pki`` it makes a throw-away dev PKI and runs its own mosquitto (which must be
installed); with ``--pki DIR`` (a `camveil dev-pki` folder, or one laid out the same way) and
optionally ``--broker URL`` it runs against an existing broker, e.g. on the installation's own
hardware. Exit status 0 when nothing was lost or duplicated, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.chaos import ChaosPlan, ChaosReport, External, run_chaos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=1000, help="events to send (default 1000)")
    parser.add_argument(
        "--broker-restarts", type=int, default=5, help="broker restarts (SIGTERM + start)"
    )
    parser.add_argument(
        "--agent-kills", type=int, default=3, help="SIGKILLs of the unit process (restarted)"
    )
    parser.add_argument(
        "--broker-kills",
        type=int,
        default=0,
        help="SIGKILLs of our own broker (a crash; mosquitto loses what it acknowledged since "
        "its last autosave: with receipts the unit still has it and publishes it again)",
    )
    parser.add_argument(
        "--broker-wipes",
        type=int,
        default=0,
        help="SIGKILLs of our own broker with its persistence file deleted (a lost disk)",
    )
    parser.add_argument(
        "--backend-kills", type=int, default=0, help="stops of the backend (listener), restarted"
    )
    parser.add_argument(
        "--backend-down",
        type=float,
        default=2.0,
        help="seconds the backend stays down at each backend stop (default 2)",
    )
    parser.add_argument(
        "--delivery",
        choices=("receipt", "puback"),
        default="receipt",
        help="when the unit forgets an envelope (default receipt, as on a unit)",
    )
    parser.add_argument(
        "--receipt-timeout",
        type=float,
        default=10.0,
        help="seconds before the unit publishes an unreceipted envelope again (default 10)",
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="events per second while the unit runs"
    )
    parser.add_argument("--seed", type=int, help="seed of the random kill/restart points")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds to wait for the last deliveries"
    )
    parser.add_argument("--work-dir", type=Path, help="keep logs and state here (default: temp)")
    ext = parser.add_argument_group("an existing broker (instead of starting one)")
    ext.add_argument("--broker", help="mqtts://host:port (default: the unit bundle's)")
    ext.add_argument("--pki", type=Path, help="a dev-pki folder: unit/, backend/, ca.crt")
    ext.add_argument("--unit-state", type=Path, help="unit state dir (default: PKI/unit)")
    ext.add_argument(
        "--broker-restart-cmd", help="command that restarts the broker (needed for restarts)"
    )


def run(args: argparse.Namespace) -> int:
    plan = ChaosPlan(
        events=args.events,
        broker_restarts=args.broker_restarts,
        agent_kills=args.agent_kills,
        broker_kills=args.broker_kills,
        broker_wipes=args.broker_wipes,
        backend_kills=args.backend_kills,
        backend_down_s=args.backend_down,
        delivery=args.delivery,
        receipt_timeout_s=args.receipt_timeout,
        rate=args.rate,
        seed=args.seed,
        settle_s=args.settle,
    )
    external = None
    if args.pki is not None or args.broker is not None:
        if args.pki is None:
            print("camveil chaos: --broker needs --pki DIR", file=sys.stderr)
            return 2
        external = External(args.broker, args.pki, args.unit_state, args.broker_restart_cmd)

    def progress(message: str) -> None:
        print(f"chaos: {message}", file=sys.stderr)

    report = run_chaos(plan, work_dir=args.work_dir, external=external, progress=progress)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(r: ChaosReport) -> str:
    t = r.timings
    lines = [
        f"sent        {r.sent}  ({r.events} events, {r.statuses} online statuses"
        f"{f', {r.sent_unlogged} enqueued but unlogged' if r.sent_unlogged else ''})",
        f"received    {r.received}",
        f"lost        {r.lost}"
        + (f"  e.g. seqs {r.lost_seqs[:10]}; after fault: {r.lost_by_fault}" if r.lost else ""),
        f"duplicated  {r.duplicated}  (raw duplicates dropped by the listener: {r.raw_duplicates})",
        f"wills       {r.wills_received} delivered of {r.wills_sealed} sealed",
        f"chaos       {r.broker_restarts} broker restarts, {r.agent_kills} unit kills"
        + (f", {r.broker_kills} broker kills" if r.broker_kills else "")
        + (f", {r.broker_wipes} broker store wipes" if r.broker_wipes else "")
        + (f", {r.backend_kills} backend stops" if r.backend_kills else "")
        + f" (seed {r.seed})",
        f"delivery    {r.delivery}"
        + (f" ({r.receipts_sent} receipts sent)" if r.delivery == "receipt" else ""),
        f"time        {t.get('total_s')} s total: setup {t.get('setup_s')} s, events flowing "
        f"{t.get('flow_s')} s, drain {t.get('drain_s')} s, settle {t.get('settle_s')} s; "
        f"slowest broker restart {t.get('broker_restart_max_s')} s",
    ]
    if r.bad:
        lines.append(f"bad         {r.bad}")
    if r.broker_drop_notices:
        lines.append(
            f"broker      mosquitto logged {r.broker_drop_notices} times that it dropped messages "
            "for a full subscriber queue (max_queued_messages)"
        )
    lines.append("OK" if r.ok else "FAILED")
    return "\n".join(lines)
