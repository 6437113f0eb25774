"""How fast the dashboard's fleet page renders for a large fleet.

    python -m tools.bench_dashboard --units 500 [--rounds 20] [--no-browser] [--json]

A store (a temporary SQLite file) is filled with ``--units`` units, each with a status, an hour
of health messages (one a minute: the sparklines), config hashes (a fifth of the units with a
config set from the dashboard, half of those drifting) and a few rejections; then the fleet page
``/`` is requested ``--rounds`` times:

- ``server_ms``: the app alone (Starlette's in-process TestClient: routing, the queries, Jinja
  and the sparklines' SVG);
- ``query_ms``: the store queries and row shaping alone (:func:`dashboard.web.views.fleet`, with
  the history);
- ``browser_ms``: headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright) loading
  the page from uvicorn on loopback, from navigation start to the load event
  (``PerformanceNavigationTiming.loadEventEnd``), and ``browser_dcl_ms`` to DOMContentLoaded.

Medians (and the slowest round) in milliseconds; ``html_bytes`` is the size of the page.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from contract.confighash import digest
from dashboard import drift
from dashboard.store import NewEvent, Store, insert_events
from dashboard.web import WebConfig, create_app
from dashboard.web.auth import Passwords
from dashboard.web.views import Thresholds, fleet

CHROMIUM = "/usr/bin/chromium"
_PASSWORD = secrets.token_urlsafe(16)  # a throw-away operator of a throw-away store
_FAST = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def fill(store: Store, units: int, healths: int = 60) -> None:
    """Per unit: a status, ``healths`` health messages a minute apart up to now (the last hour
    of sparklines, with config hashes), a site; some rejections; for every fifth unit a config
    set from the dashboard, which every other of them runs (in force) and the rest do not
    (drift)."""
    now = time.time()
    set_here = {"detector": {"threads": 2}}
    for n in range(units):
        device = f"cv-bench-{n:04d}"
        overlay = set_here if n % 10 == 0 else {}
        d = digest({"unit": n % 4, **overlay}, overlay)
        config = {"effective": d.effective, "remote": d.remote, "remote_keys": d.remote_keys}
        events = [NewEvent(device, 0, f"camveil/v1/{device}/status", {
            "v": 1, "type": "status", "boot": "b", "ts": int(now * 1000),
            "body": {"state": "offline" if n % 17 == 0 else "online"}})]  # fmt: skip
        for k in range(healths):
            body = {
                "fps": 10.0 + n % 7 + (k % 5) * 0.3,
                "dropped": {"overload": n % 5},
                "outbox": {"depth": (n + k) % 11, "evicted": {}},
                "temp_c": 45.0 + n % 20 + k % 3,
                "versions": {"camveil": "0.1.0"},
                "models": {"centerface_int8": f"{n % 3:02x}" * 32},
                "config": config,
            }
            ts = int((now - (healths - 1 - k) * 60) * 1000)
            message = {"v": 1, "type": "health", "boot": "b", "ts": ts, "body": body}
            events.append(NewEvent(device, 1 + k, f"camveil/v1/{device}/event/health", message))
        with store.transaction() as conn:
            insert_events(conn, events, now)
            if n % 5 == 0:
                drift.record_set(
                    conn, device, set_here, command_id=f"op-{n}", operator="bench", now=now - 7200,
                    ack={"boot": "b", "seq": 0, "ts": int((now - 7200) * 1000)},
                )  # fmt: skip
        store.set_site(device, f"site-{n % 9}")
        if n % 13 == 0:
            store.add_rejection(device, "bad_signature")


def _ms(samples: list[float]) -> dict[str, float]:
    median = statistics.median(samples) * 1000
    return {"median": round(median, 2), "max": round(max(samples) * 1000, 2)}


def bench_dashboard(units: int, rounds: int, browser: bool) -> dict[str, Any]:
    from starlette.testclient import TestClient

    result: dict[str, Any] = {"units": units, "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.sqlite") as store:
        fill(store, units)
        Passwords(store, _FAST).set("bench", _PASSWORD)
        app = create_app(store, config=WebConfig(scan_interval_s=None), hasher=_FAST)
        query: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fleet(store, time.time(), Thresholds(), with_history=True)
            query.append(time.perf_counter() - t0)
        result["query_ms"] = _ms(query)
        with TestClient(app) as client:
            client.get("/login")
            token = client.cookies.get("camveil_login") or ""
            client.post("/login", data={"name": "bench", "password": _PASSWORD, "csrf": token})
            server: list[float] = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                page = client.get("/")
                server.append(time.perf_counter() - t0)
            assert page.status_code == 200
            assert len(re.findall(r"<tr data-device=", page.text)) == units
            assert page.text.count('<svg class="trend"') == units
            assert page.text.count('data-config="drift"') == units // 10
            result["server_ms"] = _ms(server)
            result["html_bytes"] = len(page.content)
        if browser:
            result.update(_browser(app, units, rounds))
    return result


def _browser(app: Any, units: int, rounds: int) -> dict[str, Any]:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from provisioning.devbroker import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    load: list[float] = []
    dcl: list[float] = []
    try:
        with sync_playwright() as p:
            chromium = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
            )
            page = chromium.new_page()
            page.goto(url + "/login")
            page.fill("input[name=name]", "bench")
            page.fill("input[name=password]", _PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("table#fleet")
            for _ in range(rounds):
                page.goto(url + "/", wait_until="load")
                timing = page.evaluate(
                    "(() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return [n.loadEventEnd, n.domContentLoadedEventEnd]; })()"
                )
                load.append(timing[0] / 1000)
                dcl.append(timing[1] / 1000)
            rows = page.locator("#fleet tbody tr").count()
            chromium.close()
        assert rows == units
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return {"browser_ms": _ms(load), "browser_dcl_ms": _ms(dcl)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_dashboard", description=__doc__)
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = bench_dashboard(args.units, args.rounds, browser=not args.no_browser)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key:16} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
