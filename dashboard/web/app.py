"""The dashboard's web page: a Starlette app over the store (docs/DASHBOARD.md).

Routes (every one but ``/login`` needs a session; pages redirect to ``/login``, the rest answer
401; every POST needs the session's CSRF token, else 403)::

    GET  /login, POST /login, POST /logout
    GET  /                                   fleet: sort, filter (query parameters)
    GET  /unit/<device>                      timeline, chart, snapshot, quarantine, seq gaps
    GET  /unit/<device>/snapshot/<id>.jpg    a redacted snapshot (each view audited)
    POST /unit/<device>/command              snapshot | restart_pipeline | set_config |
                                             gallery_remove
    GET  /alerts, POST /alerts/<id>/ack
    GET  /audit, GET /audit/export.json
    GET  /events                             server-sent events: "change" and "tick"
    GET  /metrics                            Prometheus (session, or the bearer token)

Pages are rendered on the server; a few lines of inline script subscribe to ``/events`` and
re-fetch the page's ``<main>`` (header ``X-Camveil-Partial: 1``) when the store changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import anyio
from argon2 import PasswordHasher
from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contract.commands import REMOTE_SECTIONS
from contract.errors import ConfigError
from dashboard import audit, drift
from dashboard.revocations import RevocationFile
from dashboard.store import Store
from dashboard.web import alerts, views
from dashboard.web.auth import LoginLimiter, Passwords, Session, Sessions, csrf_ok
from dashboard.web.charts import presence_chart, trend
from dashboard.web.commands import CommandDesk, CommandSender, ConfigValidator
from dashboard.web.metrics import registry

logger = logging.getLogger(__name__)

SESSION_COOKIE: Final = "camveil_session"
LOGIN_COOKIE: Final = "camveil_login"
_DEVICE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


@dataclass(frozen=True)
class WebConfig:
    limits: views.Thresholds = field(default_factory=views.Thresholds)
    offline_alert_after_s: float = 120.0
    """A unit offline (or silent) this long raises an alert."""
    scan_interval_s: float | None = 2.0
    """How often alerts are looked for; None: never in the background (a caller runs
    :meth:`~dashboard.web.alerts.AlertScanner.scan` itself, as the tests do)."""
    tick_s: float = 5.0
    """Pages refresh at least this often (staleness moves on without new messages)."""
    metrics_token: str | None = None
    """Bearer token that may read /metrics without a session (None: sessions only)."""
    secure_cookies: bool | None = None
    """Mark cookies Secure; None: when the request came over TLS."""
    revocations: RevocationFile = field(default_factory=lambda: RevocationFile(None))
    """The station's revoked units, shown as ``revoked`` (default: none)."""
    session_idle_s: float = 3600.0
    session_lifetime_s: float = 12 * 3600.0


class Broadcaster:
    """Store changes (any thread) -> one asyncio.Event per SSE stream (the app's loop).
    At most one wake-up is scheduled at a time, however fast the store changes."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: set[asyncio.Event] = set()
        self._scheduled = False
        self._lock = threading.Lock()
        self.stopping = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def changed(self) -> None:
        with self._lock:
            loop = self._loop
            if loop is None or self._scheduled or loop.is_closed():
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        with self._lock:
            self._scheduled = False
        for event in self._events:
            event.set()

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self._events.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._events.discard(event)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def _short(digest: str | None) -> str:
    """The first 10 hex digits of a hash (the unit page shows the whole one)."""
    return digest[:10] if digest else "-"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Web:
    """The app's state and handlers; :func:`create_app` wires it into Starlette."""

    def __init__(
        self,
        store: Store,
        config: WebConfig,
        sender: CommandSender | None,
        validate_config: ConfigValidator | None,
        clock: Callable[[], float],
        hasher: PasswordHasher | None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.passwords = Passwords(store, hasher)
        self.sessions = Sessions(clock, config.session_idle_s, config.session_lifetime_s)
        self.limiter = LoginLimiter(clock)
        self.desk = CommandDesk(store, sender, validate_config)
        self.scanner = alerts.AlertScanner(store, config.limits, config.offline_alert_after_s)
        self.broadcaster = Broadcaster()
        self.metrics = registry(store, clock, config.limits)
        self.env = Environment(
            loader=PackageLoader("dashboard.web", "templates"),
            autoescape=select_autoescape(["html"]),
            auto_reload=False,
        )
        self.env.globals.update(fmt=_fmt, ago=_ago, when=_when, trend=trend, short=_short)
        store.on_change(self.broadcaster.changed)

    # --- helpers ---

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def secure(self, request: Request) -> bool:
        forced = self.config.secure_cookies
        return forced if forced is not None else request.url.scheme == "https"

    def render(
        self, request: Request, name: str, session: Session | None, code: int = 200, **ctx: Any
    ) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        partial = request.headers.get("x-camveil-partial") == "1"
        context = {
            "nonce": nonce,
            "partial": partial,
            "operator": session.operator if session else None,
            "csrf": session.csrf if session else "",
            "open_alerts": alerts.open_count(self.store) if session else 0,
            **ctx,
        }
        html = self.env.get_template(name).render(context)
        response = HTMLResponse(html, status_code=code)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; "
            f"script-src 'nonce-{nonce}'; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        return response


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _safe_next(value: str | None) -> str:
    """Only local paths (no scheme, no //host) after login."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)


class SecurityHeaders:
    """Adds the headers above to every response that does not set them itself (plain ASGI
    middleware: it does not buffer the server-sent event stream)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in _HEADERS if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


Handler = Callable[[Request], Awaitable[Response]]
AuthedHandler = Callable[[Request, Session], Awaitable[Response]]


def create_app(
    store: Store,
    *,
    config: WebConfig | None = None,
    sender: CommandSender | None = None,
    validate_config: ConfigValidator | None = None,
    clock: Callable[[], float] = time.time,
    hasher: PasswordHasher | None = None,
) -> Starlette:
    """The web app over an open ``store``. ``sender`` sends operator commands (None: commands
    are disabled); ``validate_config`` is the unit's config validator (the dashboard may not
    import the unit's code, so the command line injects it); ``clock`` tells staleness."""
    web = Web(store, config or WebConfig(), sender, validate_config, clock, hasher)
    cfg = web.config

    def page(handler: AuthedHandler) -> Handler:
        async def wrapped(request: Request) -> Response:
            session = web.session(request)
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?{urlencode({'next': target})}", 303)
            return await handler(request, session)

        return wrapped

    def api(handler: AuthedHandler) -> Handler:
        async def wrapped(request: Request) -> Response:
            session = web.session(request)
            if session is None:
                return PlainTextResponse("login required", 401)
            return await handler(request, session)

        return wrapped

    def action(
        handler: Callable[[Request, Session, Mapping[str, Any]], Awaitable[Response]],
    ) -> Handler:
        """POST: a session and its CSRF token (form field ``csrf``)."""

        async def wrapped(request: Request) -> Response:
            session = web.session(request)
            if session is None:
                return PlainTextResponse("login required", 401)
            form = await request.form()
            token = form.get("csrf")
            if not csrf_ok(session, token if isinstance(token, str) else None):
                return PlainTextResponse("missing or wrong CSRF token", 403)
            return await handler(request, session, form)

        return wrapped

    # --- login ---

    async def login_page(request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        response = web.render(
            request,
            "login.html",
            None,
            login_csrf=token,
            next=_safe_next(request.query_params.get("next")),
            error=None,
        )
        response.set_cookie(
            LOGIN_COOKIE, token, max_age=1800, httponly=True, samesite="strict",
            secure=web.secure(request), path="/login",
        )  # fmt: skip
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("name", ""))[:128]
        password = str(form.get("password", ""))[:1024]
        nxt = _safe_next(str(form.get("next", "")))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        token = str(form.get("csrf", ""))
        if not cookie or not hmac.compare_digest(cookie, token):
            return PlainTextResponse("missing or wrong CSRF token: reload the login page", 403)
        client = _client(request)
        wait = web.limiter.blocked_for(name, client)
        if wait > 0:
            return PlainTextResponse(
                f"too many failed logins: try again in {int(wait) + 1} s",
                429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        ok = await run_in_threadpool(web.passwords.verify, name, password)
        if not ok:
            web.limiter.failed(name, client)
            logger.warning("failed login for %r from %s", name, client)
            return web.render(
                request, "login.html", None, code=401, login_csrf=cookie, next=nxt,
                error="wrong operator name or password",
            )  # fmt: skip
        web.limiter.succeeded(name, client)
        sid, _ = web.sessions.create(name)
        await run_in_threadpool(audit.append, store, name, "login", client)
        response = RedirectResponse(nxt, 303)
        response.set_cookie(
            SESSION_COOKIE, sid, httponly=True, samesite="strict", secure=web.secure(request),
            path="/",
        )  # fmt: skip
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(request: Request, session: Session, form: Mapping[str, Any]) -> Response:
        web.sessions.drop(request.cookies.get(SESSION_COOKIE))
        await run_in_threadpool(audit.append, store, session.operator, "logout", _client(request))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- pages ---

    async def fleet_page(request: Request, session: Session) -> Response:
        qp = request.query_params
        q = qp.get("q", "")[:100]
        status = qp.get("status", "")
        status = status if status in views.STATUSES else ""
        site = qp.get("site", "")[:100]
        config = qp.get("config", "")
        config = config if config in drift.STATES else ""
        sort = qp.get("sort", "device")
        sort = sort if sort in views.SORT_KEYS else "device"
        desc = qp.get("desc") == "1"
        args: dict[str, Any] = {
            "q": q, "status": status, "site": site, "config": config, "sort": sort, "desc": desc,
        }  # fmt: skip

        def build() -> dict[str, Any]:
            rows = views.fleet(
                store, web.clock(), cfg.limits, q=q, status=status, site=site, config=config,
                sort=sort, descending=desc, revoked=cfg.revocations.current(), with_history=True,
            )  # fmt: skip
            total = int(store.read("SELECT COUNT(*) FROM units")[0][0])
            return {"rows": rows, "total": total, "sites": views.sites(store)}

        def query(**over: Any) -> str:
            merged = {**args, **over}
            merged["desc"] = "1" if merged["desc"] in (True, "1") else ""
            return urlencode({k: v for k, v in merged.items() if v})

        data = await run_in_threadpool(build)
        return web.render(
            request, "fleet.html", session, statuses=views.STATUSES, query=query,
            drift_states=drift.STATES,
            stale_after=cfg.limits.stale_after_s, offline_after=cfg.limits.offline_after_s,
            **args, **data,
        )  # fmt: skip

    def unit_context(device: str) -> dict[str, Any] | None:
        row = views.fleet_row(store, device, web.clock(), cfg.limits, cfg.revocations.current())
        if row is None:
            return None
        history = views.commands(store, device)
        last_config = next((c for c in history if c.name == "set_config"), None)
        health_at = row.unit.health_at
        return {
            "unit": row.unit,
            "row": row,
            "health_age": web.clock() - health_at if health_at is not None else None,
            "snapshot": store.latest_snapshot(device),
            "chart": presence_chart(views.presence_series(store, device)),
            "timeline": views.timeline(store, device),
            "enrolment": views.enrolment_log(store, device),
            "rejections": store.rejections(device).get(device, {}),
            "boots": views.boots(store, device),
            "commands": history,
            "last_config": last_config,
            "commands_enabled": web.desk.enabled,
            "remote_sections": ", ".join(REMOTE_SECTIONS),
        }

    async def unit_page(request: Request, session: Session) -> Response:
        device = request.path_params["device"]
        ctx = await run_in_threadpool(unit_context, device) if _DEVICE.fullmatch(device) else None
        if ctx is None:
            return PlainTextResponse(f"no unit {device!r}", 404)
        notice = request.query_params.get("sent")
        return web.render(
            request, "unit.html", session, error=None, config_text="", subject_text="",
            notice=f"command {notice} sent; its ack appears below" if notice else None, **ctx,
        )  # fmt: skip

    async def snapshot(request: Request, session: Session) -> Response:
        device = request.path_params["device"]
        event_id = int(request.path_params["event_id"])
        event = await run_in_threadpool(store.event, event_id)
        body = event.body if event is not None else None
        jpeg = body.get("jpeg") if isinstance(body, Mapping) else None
        if event is None or event.device != device or event.type != "snapshot" or not jpeg:
            return PlainTextResponse("no such snapshot", 404)
        target = f"{device} event {event.id} (boot {event.boot}, seq {event.seq})"
        await run_in_threadpool(audit.append, store, session.operator, "view_snapshot", target)
        return Response(
            bytes(jpeg),
            media_type="image/jpeg",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def command(request: Request, session: Session, form: Mapping[str, Any]) -> Response:
        device = request.path_params["device"]
        known = await run_in_threadpool(store.unit, device) if _DEVICE.fullmatch(device) else None
        if known is None:
            return PlainTextResponse(f"no unit {device!r}", 404)
        name = str(form.get("command", ""))
        text = str(form.get("config", ""))[:4000]
        subject = str(form.get("subject", ""))[:200]
        try:
            sent = await run_in_threadpool(
                web.desk.submit, session.operator, device, name, text, subject
            )
        except ConfigError as exc:
            ctx = await run_in_threadpool(unit_context, device)
            assert ctx is not None
            return web.render(
                request, "unit.html", session, code=400, error=f"not sent: {exc}",
                notice=None, config_text=text, subject_text=subject, **ctx,
            )  # fmt: skip
        store.notify()
        return RedirectResponse(f"/unit/{device}?{urlencode({'sent': sent.id})}", 303)

    async def alerts_page(request: Request, session: Session) -> Response:
        found = await run_in_threadpool(alerts.listing, store)
        return web.render(request, "alerts.html", session, alerts=found)

    async def ack_alert(request: Request, session: Session, form: Mapping[str, Any]) -> Response:
        alert_id = int(request.path_params["alert_id"])
        acked = await run_in_threadpool(alerts.acknowledge, store, alert_id, session.operator)
        if acked is None:
            return PlainTextResponse("no such open alert", 404)
        target = f"alert {acked.id} {acked.kind} {acked.device}: {acked.detail}"
        await run_in_threadpool(audit.append, store, session.operator, "ack_alert", target)
        store.notify()
        return RedirectResponse("/alerts", 303)

    async def audit_page(request: Request, session: Session) -> Response:
        def build() -> dict[str, Any]:
            return {
                "check": audit.verify(store),
                "entries": list(reversed(audit.entries(store, 500))),
            }

        return web.render(request, "audit.html", session, **await run_in_threadpool(build))

    async def audit_export(request: Request, session: Session) -> Response:
        def build() -> dict[str, Any]:
            audit.append(store, session.operator, "export_audit", "json")
            check = audit.verify(store)
            return {
                "verified": check.ok,
                "rows": check.rows,
                "first_bad": check.first_bad,
                "genesis": audit.GENESIS,
                "entries": [e.__dict__ for e in audit.entries(store)],
            }

        data = await run_in_threadpool(build)
        return JSONResponse(
            data,
            headers={
                "Content-Disposition": 'attachment; filename="camveil-audit.json"',
                "Cache-Control": "no-store",
            },
        )

    async def events(request: Request, session: Session) -> Response:
        wake = web.broadcaster.subscribe()
        stopping = web.broadcaster.stopping

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                while not stopping.is_set():
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=cfg.tick_s)
                    except asyncio.TimeoutError:
                        yield "event: tick\ndata: 1\n\n"
                        continue
                    await asyncio.sleep(0.3)  # coalesce a burst of changes into one refresh
                    wake.clear()
                    yield "event: change\ndata: 1\n\n"
            finally:
                web.broadcaster.unsubscribe(wake)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def metrics(request: Request) -> Response:
        token = cfg.metrics_token
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
        by_token = bool(token) and bool(bearer) and hmac.compare_digest(bearer, token or "")
        if not by_token and web.session(request) is None:
            return PlainTextResponse("login required (or the metrics bearer token)", 401)
        body = await run_in_threadpool(generate_latest, web.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # --- lifetime ---

    async def scan_loop(interval: float) -> None:
        while not web.broadcaster.stopping.is_set():
            try:
                if await anyio.to_thread.run_sync(web.scanner.scan):
                    store.notify()
            except Exception:  # a scan that fails must not stop the next ones
                logger.exception("alert scan failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(web.broadcaster.stopping.wait(), interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        web.broadcaster.stopping = asyncio.Event()
        web.broadcaster.bind(asyncio.get_running_loop())
        web.desk.start()
        interval = cfg.scan_interval_s
        task = asyncio.create_task(scan_loop(interval)) if interval is not None else None
        try:
            yield
        finally:
            web.broadcaster.stopping.set()
            web.broadcaster.changed()
            if task is not None:
                await task
            await run_in_threadpool(web.desk.stop)

    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", action(logout), methods=["POST"]),
        Route("/", page(fleet_page), methods=["GET"]),
        Route("/unit/{device}", page(unit_page), methods=["GET"]),
        Route("/unit/{device}/snapshot/{event_id:int}.jpg", api(snapshot), methods=["GET"]),
        Route("/unit/{device}/command", action(command), methods=["POST"]),
        Route("/alerts", page(alerts_page), methods=["GET"]),
        Route("/alerts/{alert_id:int}/ack", action(ack_alert), methods=["POST"]),
        Route("/audit", page(audit_page), methods=["GET"]),
        Route("/audit/export.json", api(audit_export), methods=["GET"]),
        Route("/events", api(events), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
    app.state.web = web
    return app


def first_operator_password(app: Starlette) -> str | None:
    """Create ``admin`` with a one-time password when the store has no operator (shown once)."""
    web: Web = app.state.web
    return web.passwords.ensure_first_operator()
