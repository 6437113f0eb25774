"""`camveil bench --suite ingest`: how many events one ingest process verifies, decrypts and
stores per second, and that nothing is lost or duplicated on the way.

Everything is the production path on one machine: a throw-away station
(:func:`provisioning.station.init_station`), ``units`` simulated units provisioned with it over the
provisioning protocol (:func:`tools.simulate.provision_fleet`), the station's mosquitto config
(TLS, client certificates, ACL), and :class:`dashboard.ingest.Ingest` in **separate processes**
(``python -m tools.bench_ingest worker``), each with its own backend certificate, a persistent
session on the station's secret shared subscription, and one SQLite store (WAL) for all of them.

A run with ``k`` ingest processes:

1. each process connects once, subscribes and leaves (its session stays at the broker);
2. every unit publishes ``events`` freshly sealed presence / health events (QoS 1) and the bench
   waits for every PUBACK; the broker queues them for the absent ingest sessions;
3. the ingest processes start together and drain the queue; each reports how many events it
   stored between its first delivery and its last commit.

``events_per_s`` is events stored / seconds from the first delivery to the last commit (over all
processes of the run). ``lost`` is the number of PUBACKed events that are not in the store;
``duplicated`` the number of (device, boot, seq) stored more than once (the schema makes it 0 by
construction; the bench checks it anyway); ``redelivered`` counts copies the ingest recognised and
dropped. Measuring the drain of a backlog keeps the publishers' cost (sealing, 500 TLS clients) out
of the ingest's number; the publish rate is reported beside it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.unitstate import BrokerAddress
from contract.certclaim import key_for
from contract.envelope.keys import load_identity, load_peers
from contract.envelope.seal import SealedEnvelope
from contract.errors import BrokerStartError
from provisioning import broker as broker_config
from provisioning import devbroker
from provisioning.station import StationPaths, init_station

BACKENDS = ("bench", "bench-2")


def _log(message: str) -> None:
    print(f"bench ingest: {message}", file=sys.stderr, flush=True)


def bench_ingest(
    units: int = 500,
    events: int = 20,
    *,
    processes: tuple[int, ...] = (1, 2),
    workdir: Path | None = None,
    log: Callable[[str], None] = _log,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Set up, run once per entry of ``processes`` (ingest processes per run), report.

    ``profile``: a folder where each draining ingest process leaves a cProfile of all its
    threads (``<run>-<backend>.prof``, read with :mod:`pstats`); it slows the run down."""
    from tools.simulate import Fleet, SimSettings, load_units, provision_fleet

    devbroker.mosquitto_binary()  # ConfigError with the install hint
    with tempfile.TemporaryDirectory(prefix="camveil-bench-ingest-", dir=workdir) as tmp:
        root = Path(tmp)
        port = devbroker.free_port()
        paths = init_station(
            root / "station",
            broker_url=f"mqtts://127.0.0.1:{port}",
            broker_names=("127.0.0.1",),
            broker_settings=broker_config.BrokerSettings(
                port=port,
                bind_address="127.0.0.1",
                user=getpass.getuser(),
                persistence=False,
            ),
            backends=BACKENDS[: max(processes)],
        )
        started = time.monotonic()
        log(f"provisioning {units} units with the station ...")
        dirs = provision_fleet(paths.root, root / "units", units)
        provision_s = time.monotonic() - started
        cert = paths.backend_cert(BACKENDS[0])
        broker = devbroker.BrokerProcess(
            paths.broker_dir / "mosquitto.conf",
            port=port,
            probe=devbroker.ProbeClient(paths.ca_dir / "ca.crt", cert, key_for(cert)),
            log_path=root / "mosquitto.log",
        )
        report: dict[str, Any] = {
            "units": units,
            "events_per_unit": events,
            "provision_s": round(provision_s, 1),
        }
        with broker:
            fleet = Fleet(
                load_units(dirs),
                BrokerAddress("127.0.0.1", port),
                SimSettings(rate=0, threads=1, max_inflight=100),
                record_acked=True,
            )
            fleet.start()
            try:
                if not fleet.wait_connected(120.0):
                    raise BrokerStartError(
                        f"only {fleet.stats.connected} of {units} units connected"
                    )
                for k in processes:
                    log(f"run with {k} ingest process(es) ...")
                    run = _run(paths, port, fleet, events, k, root / f"run-{k}", log, profile)
                    report["one_process" if k == 1 else f"{k}_processes"] = run
            finally:
                fleet.stop(publish_will=False)
        first = report.get("one_process") or next(
            v for k, v in report.items() if isinstance(v, dict)
        )
        for key in ("events_per_s", "lost", "duplicated"):
            report[key] = first[key]
        return report


def _run(
    paths: StationPaths,
    port: int,
    fleet: Any,
    events: int,
    k: int,
    workdir: Path,
    log: Callable[[str], None],
    profile: Path | None = None,
) -> dict[str, Any]:
    workdir.mkdir()
    db = workdir / "dashboard.db"
    fleet.wait_acked(fleet.stats.published, timeout=60)  # the units' online status
    names = BACKENDS[:k]
    for name in names:  # a session that stays at the broker while the units publish
        prepare = _worker(paths, port, name, db, workdir, prepare=True)
        prepare.communicate(timeout=60)
        if prepare.returncode != 0:
            raise BrokerStartError(f"ingest worker could not subscribe: {_tail(workdir)}")
    sealed: dict[str, list[SealedEnvelope]] = {}
    t0 = time.monotonic()
    for unit in fleet.units:
        items = []
        for i in range(events):
            items.append(unit.health() if i % 10 == 0 else unit.presence())
        sealed[unit.device] = items
    seal_s = time.monotonic() - t0
    before = fleet.stats.acked
    fleet.stats.acked_envelopes.clear()
    total = sum(len(v) for v in sealed.values())
    t0 = time.monotonic()
    for device, items in sealed.items():
        fleet.publish(device, items)
    if not fleet.wait_acked(before + total, timeout=300):
        raise BrokerStartError(f"only {fleet.stats.acked - before} of {total} events acknowledged")
    publish_s = time.monotonic() - t0
    log(f"{total} events published and acknowledged ({total / publish_s:.0f}/s); draining ...")
    procs = [
        _worker(
            paths,
            port,
            name,
            db,
            workdir,
            prepare=False,
            profile=None if profile is None else profile / f"run{k}-{name}.prof",
        )
        for name in names
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise BrokerStartError(f"ingest worker failed: {_tail(workdir)}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    published = {(d, s) for d, s in fleet.stats.acked_envelopes}
    stored, duplicated = _stored(db, published)
    first = min(r["first_at"] for r in results if r["first_at"] is not None)
    last = max(r["last_stored_at"] for r in results if r["last_stored_at"] is not None)
    seconds = max(last - first, 1e-9)
    events_stored = sum(r["stored_events"] for r in results)
    return {
        "processes": k,
        "events": total,
        "seal_per_s": round(total / seal_s),
        "publish_per_s": round(total / publish_s),
        "events_per_s": round(events_stored / seconds),
        "events_per_cpu_s": round(events_stored / max(sum(r["cpu_s"] for r in results), 1e-9)),
        "seconds": round(seconds, 2),
        "lost": len(published - stored),
        "duplicated": duplicated,
        "redelivered": sum(r["duplicates"] + r["rejected"].get("replayed", 0) for r in results),
        "per_process": [
            {
                "stored": r["stored_events"],
                "events_per_s": r["events_per_s"],
                "batches": r["batches"],
                "store_failures": r["store_failures"],
                "cpu_s": r["cpu_s"],
                "open_s": r["open_s"],
                "write_s": r["write_s"],
                "receipts": r["receipts"],
            }
            for r in results
        ],
    }


def _tail(workdir: Path) -> str:
    """The last lines the ingest workers logged (the run's folder is removed afterwards)."""
    lines = []
    for log in sorted(workdir.glob("*.log")):
        lines += log.read_text(errors="replace").splitlines()[-3:]
    return " | ".join(lines) or "(no log)"


def _stored(db: Path, published: set[tuple[str, int]]) -> tuple[set[tuple[str, int]], int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT device, seq FROM events WHERE type != 'status'").fetchall()
        (dups,) = conn.execute(
            "SELECT count(*) - count(DISTINCT device || '/' || boot || '/' || seq) FROM events"
        ).fetchone()
    finally:
        conn.close()
    stored = {(d, s) for d, s in rows if (d, s) in published}
    return stored, int(dups)


def _worker(
    paths: StationPaths,
    port: int,
    name: str,
    db: Path,
    workdir: Path,
    *,
    prepare: bool,
    profile: Path | None = None,
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "tools.bench_ingest",
        "--station",
        str(paths.root),
        "--port",
        str(port),
        "--backend",
        name,
        "--db",
        str(db),
    ]
    if prepare:
        argv.append("--prepare")
    if profile is not None:
        argv += ["--profile", str(profile)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with (workdir / f"{name}{'-prepare' if prepare else ''}.log").open("wb") as log:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)  # noqa: S603


def format_ingest(report: dict[str, Any]) -> str:
    lines = [
        f"ingest: {report['units']} units x {report['events_per_unit']} events, provisioned in "
        f"{report['provision_s']} s"
    ]
    for run in report.values():
        if isinstance(run, dict):
            shares = ", ".join(str(p["stored"]) for p in run["per_process"])
            lines.append(
                f"  {run['processes']} process(es): {run['events_per_s']} events/s stored "
                f"({run['events']} in {run['seconds']} s; split {shares}), lost {run['lost']}, "
                f"duplicated {run['duplicated']}, redelivered {run['redelivered']}; "
                f"published at {run['publish_per_s']}/s"
            )
    return "\n".join(lines)


# --- the ingest worker process ---------------------------------------------------------------


def worker(argv: list[str] | None = None) -> int:
    """One ingest process: ``--prepare`` subscribes and leaves; otherwise drain until idle."""
    from dashboard.ingest import Ingest
    from dashboard.listener import ListenerConfig
    from dashboard.store import Store

    parser = argparse.ArgumentParser(prog="python -m tools.bench_ingest")
    parser.add_argument("--station", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--prepare", action="store_true")
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--profile", type=Path, help="write a cProfile of every thread here")
    args = parser.parse_args(argv)
    profiler = _ThreadProfiles() if args.profile is not None else None
    paths = StationPaths(args.station)
    cert = paths.backend_cert(args.backend)
    config = ListenerConfig(
        "127.0.0.1",
        args.port,
        paths.ca_dir / "ca.crt",
        cert,
        key_for(cert),
        group=paths.share_group.read_text().strip(),
        client_id=f"backend-{args.backend}",
    )
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(1))
    with Store(args.db) as store:
        ingest = Ingest(config, load_identity(paths.backend_key), load_peers(paths.peers), store)
        with ingest:
            if not ingest.listener.subscribed.wait(30):
                print("not subscribed after 30 s", file=sys.stderr)
                return 1
            if args.prepare:
                return 0
            cpu_before = time.process_time()
            deadline = time.monotonic() + args.timeout
            last, quiet_since = -1, time.monotonic()
            while time.monotonic() < deadline:
                time.sleep(0.1)
                now_acked = ingest.stats.acked
                if now_acked != last:
                    last, quiet_since = now_acked, time.monotonic()
                elif now_acked and time.monotonic() - quiet_since >= args.idle:
                    break
            cpu_s = time.process_time() - cpu_before  # idle waiting costs next to nothing
        s = ingest.stats
        stored_events = sum(n for kind, n in s.stored.items() if kind != "status")
        first, done = s.first_at, s.last_stored_at
        span = (done - first) if first is not None and done is not None else None
        offset = time.time() - time.monotonic()  # wall clock, comparable across processes
        result = {
            "stored": dict(s.stored),
            "stored_events": stored_events,
            "duplicates": s.duplicates,
            "rejected": dict(s.rejected),
            "batches": s.batches,
            "store_failures": s.store_failures,
            "cpu_s": round(cpu_s, 3),
            "open_s": round(s.open_s, 3),
            "write_s": round(s.write_s, 3),
            "receipts": ingest.receipter.stats.sent if ingest.receipter is not None else 0,
            "first_at": None if first is None else first + offset,
            "last_stored_at": None if done is None else done + offset,
            "events_per_s": round(stored_events / span) if span else None,
        }
    if profiler is not None:  # every thread has ended
        profiler.dump(args.profile)
    print(json.dumps(result), flush=True)
    return 0


class _ThreadProfiles:
    """cProfile of every thread started from now on (cProfile sees one thread only): each
    thread's ``run`` is wrapped in its own profiler; :meth:`dump` merges them into one file."""

    def __init__(self) -> None:
        import cProfile
        import threading

        self._profiles: list[cProfile.Profile] = []
        original = threading.Thread.run
        profiles = self._profiles

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.runcall(original, thread)

        threading.Thread.run = run  # type: ignore[method-assign,assignment]

    def dump(self, path: Path) -> None:
        import pstats

        pstats.Stats(*self._profiles).dump_stats(path)


if __name__ == "__main__":
    sys.exit(worker())
