"""The station's web application (Starlette, server-rendered Jinja2 pages).

Pages: ``/status`` (the line, live), ``/review`` (the manual station's queue),
``/review/item/<id>`` (one item, its verdict history, corrections), ``/models``
(model card, candidates' safety tables, promotion).  Every page needs a login;
every POST needs the session's CSRF token; promotion needs the ``engineer`` role.

The periodic reading of the audit log and the line's log runs in a background
thread (:class:`~sorter.station.linedata.LineWatcher`), so a page only reads a
snapshot and the station store.

Why this module is long (about 600 lines): the routes share the session, CSRF and role
checks and the one Jinja2 environment defined here; each route is a short function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sorter.errors import ImageError, ImageExpiredError, SorterError
from sorter.logformat import is_expired

from .auth import LoginThrottle, check_password, csrf_ok, new_csrf_token
from .images import ImageCache, render_image
from .linedata import AuditReader, LineLog, LineWatcher, minute_chart
from .settings import StationSettings
from .store import LABELS, StationError, StationStore

logger = logging.getLogger(__name__)

__all__ = ["StationSettings", "create_app"]

SESSION_MAX_AGE_S = 12 * 3600


def _fmt_time(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


class Station:
    """State shared by the request handlers."""

    def __init__(self, settings: StationSettings, store: StationStore | None = None) -> None:
        self.settings = settings
        self.store = store or StationStore(settings.store_path)
        self.audit = AuditReader(settings.audit_path)
        self.log = LineLog(settings.log_dir, self.store)
        self.watcher = LineWatcher(
            self.audit, self.log, self.store, spot_check=settings.spot_check, metrics_url=settings.metrics_url
        )
        self.throttle = LoginThrottle()
        self.images = ImageCache()
        self.evaluations: dict[str, list[dict[str, Any]]] = {}
        self.eval_lock = asyncio.Lock()  # one evaluation at a time: it measures every labelled item
        self.env = Environment(
            loader=PackageLoader("sorter.station", "templates"), autoescape=select_autoescape(["html"])
        )
        self.env.filters["time"] = _fmt_time
        self.env.filters["num"] = _fmt_num
        self.env.filters["q"] = lambda s: quote(str(s), safe="")

    def render(self, request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("user", request.session.get("user"))
        ctx.setdefault("role", request.session.get("role"))
        ctx.setdefault("csrf", request.session.get("csrf", ""))
        ctx.setdefault("line_name", self.settings.line_name)
        ctx.setdefault("path", request.url.path)
        return HTMLResponse(self.env.get_template(name).render(**ctx), status_code=status_code)


Handler = Callable[[Request], Awaitable[Response]]


def page(role: str | None = None) -> Callable[[Callable[[Station, Request], Awaitable[Response]]], Handler]:
    """Guard a handler: a logged-in user (the role when given), and the CSRF token on every POST."""

    def wrap(fn: Callable[[Station, Request], Awaitable[Response]]) -> Handler:
        async def handler(request: Request) -> Response:
            st: Station = request.app.state.station
            name = request.session.get("user")
            user = st.store.user(name) if name else None
            if user is None or time.time() - float(request.session.get("since", 0)) > SESSION_MAX_AGE_S:
                request.session.clear()
                if request.method == "GET":
                    return RedirectResponse(f"/login?next={quote(request.url.path, safe='/')}", status_code=303)
                return PlainError(401, "log in first")
            request.session["role"] = user.role  # a role changed by add-user applies at once
            if request.method == "POST":
                sent = request.headers.get("x-csrf-token")
                if sent is None:
                    form = await request.form()
                    sent = form.get("csrf")
                if not csrf_ok(request.session.get("csrf"), sent):
                    return PlainError(403, "missing or wrong CSRF token: reload the page and try again")
            if role is not None and user.role != role:
                return PlainError(403, f"this needs the {role} role; you are logged in as {user.role}")
            return await fn(st, request)

        handler.__name__ = fn.__name__
        return handler

    return wrap


def PlainError(status: int, text: str) -> Response:  # noqa: N802 - reads like a response class
    return Response(text + "\n", status_code=status, media_type="text/plain; charset=utf-8")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _safe_next(target: str | None) -> str:
    # only a local path: never an absolute URL or a scheme-relative one (open redirect)
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/review"
    return target


# ---------------------------------------------------------------- login


async def login_page(request: Request) -> Response:
    st: Station = request.app.state.station
    if "csrf" not in request.session:
        request.session["csrf"] = new_csrf_token()
    return st.render(request, "login.html", next=_safe_next(request.query_params.get("next")), error=None)


async def login(request: Request) -> Response:
    st: Station = request.app.state.station
    form = await request.form()
    if not csrf_ok(request.session.get("csrf"), form.get("csrf")):
        return PlainError(403, "missing or wrong CSRF token: reload the login page and try again")
    name = str(form.get("user", ""))[:64]
    password = str(form.get("password", ""))[:1024]
    nxt = _safe_next(str(form.get("next", "")))
    client = _client(request)
    wait = st.throttle.retry_after(name, client)
    if wait > 0:
        await asyncio.sleep(1.0)  # slow every refused attempt too
        resp = st.render(
            request,
            "login.html",
            status_code=429,
            next=nxt,
            error=f"Too many wrong passwords. Try again in {math.ceil(wait)} s.",
        )
        resp.headers["Retry-After"] = str(math.ceil(wait))
        return resp
    role = await asyncio.to_thread(check_password, st.store, name, password)
    if role is None:
        st.throttle.failed(name, client)
        logger.warning("station: failed login for %r from %s", name, client)
        return st.render(request, "login.html", status_code=401, next=nxt, error="Wrong user name or password.")
    st.throttle.succeeded(name, client)
    request.session.clear()  # a new session on login (no fixation)
    request.session.update({"user": name, "role": role, "csrf": new_csrf_token(), "since": time.time()})
    logger.info("station: %s logged in from %s", name, client)
    return RedirectResponse(nxt, status_code=303)


@page()
async def logout(st: Station, request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


# ---------------------------------------------------------------- status


@page()
async def status_page(st: Station, request: Request) -> Response:
    snap = st.watcher.snapshot
    return st.render(
        request, "status.html", s=snap, chart=minute_chart(snap.minutes), refresh_ms=int(st.settings.refresh_s * 1000)
    )


@page()
async def status_json(st: Station, request: Request) -> Response:
    snap = st.watcher.snapshot
    d = snap.to_json()
    d["chart"] = minute_chart(snap.minutes)
    d.pop("minutes")
    return JSONResponse(d, headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- review


def _item_context(st: Station, item_id: str) -> dict[str, Any] | None:
    q = st.store.queue_item(item_id)
    if q is None:
        return None
    audit = st.audit.decision(item_id) or {}
    rec = st.log.record(item_id)
    novelty_col = st.audit.optional_column("novelty", "novelty_score")
    extras = {k: v for k, v in audit.items() if k in ("mismatch", "mismatch_reason", "line_mismatch")}
    readings = []
    if rec is not None:
        for name, unit in (
            ("weight_g", "g"),
            ("length_mm", "mm"),
            ("width_mm", "mm"),
            ("height_mm", "mm"),
            ("surface_temp_c", "°C"),
        ):
            readings.append((name, getattr(rec, name), unit))
    images = []
    if rec is not None:
        gone = {name: _expired(st, rec, name) for name in ("xray_low", "xray_high", "rgb")}
        if rec.xray_low and rec.xray_high:
            images.append(
                ("material", "X-ray, both energies (colour: material)", gone["xray_low"] or gone["xray_high"])
            )
        if rec.xray_low:
            images.append(("xray_low", "X-ray low energy", gone["xray_low"]))
        if rec.xray_high:
            images.append(("xray_high", "X-ray high energy", gone["xray_high"]))
        if rec.rgb:
            images.append(("rgb", "camera", gone["rgb"]))
    probs = [(c, audit.get(f"p_{c}")) for c in LABELS]
    return {
        "q": q,
        "audit": audit,
        "record": rec,
        "readings": readings,
        "images": images,
        "probs": probs,
        "novelty": audit.get(novelty_col) if novelty_col else None,
        "extras": extras,
        "history": st.store.history(item_id),
        "problems": list(rec.problems) if rec else [],
    }


def _expired(st: Station, rec: Any, name: str) -> bool:
    """Whether the record's image ``name`` was deleted by the retention policy (shown as expired)."""
    if getattr(rec, name) is None:
        return False
    try:
        return is_expired(st.log.image_path(rec, name))
    except ImageError:
        return False


def _measurements(st: Station, item_id: str) -> list[tuple[str, float]]:
    from sorter.features.measure import RAW_COLUMNS, measure_item
    from sorter.logformat import load_item

    rec = st.log.record(item_id)
    if rec is None or st.log.log_dir is None:
        return []
    raw = measure_item(load_item(rec, st.log.log_dir, st.log.meta))
    return [(c, float(v)) for c, v in zip(RAW_COLUMNS, raw) if math.isfinite(v)]


def _order(request: Request) -> str:
    o = request.query_params.get("order", "newest")
    return o if o in ("newest", "belt") else "newest"


@page()
async def review_page(st: Station, request: Request) -> Response:
    order = _order(request)
    q = st.store.next_open(order=order)
    ctx = _item_context(st, q.item_id) if q else None
    return st.render(
        request,
        "review.html",
        it=ctx,
        order=order,
        counts=st.store.queue_counts(),
        recent=st.store.recent_verdicts(8),
        labels=LABELS,
    )


@page()
async def review_next(st: Station, request: Request) -> Response:
    """The item after ``cursor`` (audit id) in the chosen order, as an HTML fragment (for prefetching)."""
    order = _order(request)
    try:
        cursor = int(request.query_params.get("cursor", ""))
    except ValueError:
        cursor = None
    exclude = [x for x in request.query_params.get("exclude", "").split(",") if x][:10]
    q = st.store.next_open(
        order=order,
        before=cursor if order == "newest" else None,
        after=cursor if order == "belt" else None,
        exclude=exclude,
    )
    if q is None:  # wrapped around: anything still open (newer items may have arrived)
        q = st.store.next_open(order=order, exclude=exclude)
    if q is None:
        return Response(status_code=204)
    ctx = _item_context(st, q.item_id)
    return st.render(request, "_item.html", it=ctx, labels=LABELS, order=order)


@page()
async def item_page(st: Station, request: Request) -> Response:
    item_id = request.path_params["item_id"]
    ctx = _item_context(st, item_id)
    if ctx is None:
        return PlainError(404, f"item {item_id!r} is not in the review queue")
    meas = await asyncio.to_thread(_measurements, st, item_id)
    return st.render(request, "item.html", it=ctx, labels=LABELS, measurements=meas, order=_order(request))


@page()
async def verdict(st: Station, request: Request) -> Response:
    form = await request.form()
    item_id = str(form.get("item_id", ""))
    label = str(form.get("label", ""))
    damaged = str(form.get("damaged", "no")).lower() in ("yes", "1", "true", "on", "y")
    note = str(form.get("note", ""))
    try:
        v = st.store.add_verdict(item_id, label, damaged=damaged, note=note, user=request.session["user"])
    except StationError as err:
        if "json" in request.headers.get("accept", ""):
            return JSONResponse({"ok": False, "error": str(err)}, status_code=400)
        return PlainError(400, str(err))
    logger.info("station: %s says %s is %s%s", v.user, item_id, label, " (damaged)" if damaged else "")
    if "json" in request.headers.get("accept", ""):
        return JSONResponse(
            {
                "ok": True,
                "id": v.id,
                "item_id": item_id,
                "label": label,
                "damaged": damaged,
                "corrects": v.corrects,
                "open": st.store.queue_counts()["open"],
            }
        )
    back = str(form.get("back", ""))
    return RedirectResponse(_safe_next(back) if back else "/review", status_code=303)


@page()
async def image(st: Station, request: Request) -> Response:
    item_id = request.path_params["item_id"]
    kind = request.path_params["kind"]
    if kind not in ("xray_low", "xray_high", "material", "rgb"):
        return PlainError(404, "no such image")
    key = (item_id, kind)
    data = st.images.get(key)
    if data is None:
        if st.store.queue_item(item_id) is None:
            return PlainError(404, "item not in the review queue")
        rec = st.log.record(item_id)
        if rec is None:
            return PlainError(404, "no record of this item in the line's log")
        try:
            data = await asyncio.to_thread(render_image, st.log, rec, kind)
        except ImageExpiredError:
            return PlainError(404, "image expired (deleted by the retention policy)")
        except ImageError as err:
            logger.warning("station: image %s of %s refused: %s", kind, item_id, err)
            return PlainError(404, "image not available")
        st.images.put(key, data)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


# ---------------------------------------------------------------- models


def _model_card(model_dir: str) -> dict[str, Any]:
    import json

    from sorter.model import default_model_dir

    d = Path(model_dir) if model_dir else default_model_dir()
    out: dict[str, Any] = {
        "dir": str(model_dir or "the shipped model"),
        "manifest": None,
        "card": None,
        "target": None,
        "name": Path(model_dir).name if model_dir else "the shipped model",
    }
    if model_dir and Path(model_dir).is_symlink():
        out["target"] = str(Path(model_dir).readlink())
    try:
        out["manifest"] = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        card = d / "MODEL_CARD.md"
        out["card"] = card.read_text(encoding="utf-8")[:20000] if card.is_file() else None
    except (OSError, ValueError) as err:
        out["error"] = str(err)
    m = out["manifest"] or {}
    files = m.get("files", {}) if isinstance(m, dict) else {}
    digest = str(files.get("classifier.skops", ""))[:12]
    out["model_id"] = f"{m.get('name', 'model')}@{digest}" if digest else None
    return out


@page()
async def models_page(st: Station, request: Request) -> Response:
    from .promotion import list_candidates

    current = _model_card(st.settings.line_model)
    cands = [p.name for p in list_candidates(st.settings.candidates_dir)]
    return st.render(
        request,
        "models.html",
        current=current,
        candidates=cands,
        evaluations=st.evaluations,
        in_charge=st.watcher.snapshot.model_in_charge,
        promotions=st.store.promotions(),
        message=request.query_params.get("msg"),
        labelled=st.store.verdict_count(),
    )


async def _evaluate(st: Station, name: str) -> list[dict[str, Any]]:
    from .promotion import evaluate_on_labels, resolve_candidate

    cand = resolve_candidate(st.settings.candidates_dir, name)
    async with st.eval_lock:
        tables = await asyncio.to_thread(
            evaluate_on_labels,
            st.store,
            st.log,
            [st.settings.line_model or None, str(cand)],
            Path(st.settings.store_path).parent,
        )
    st.evaluations[name] = [t.to_json() for t in tables]
    return st.evaluations[name]


@page()
async def models_evaluate(st: Station, request: Request) -> Response:
    form = await request.form()
    name = str(form.get("candidate", ""))
    try:
        await _evaluate(st, name)
    except SorterError as err:
        return RedirectResponse(f"/models?msg={quote(str(err))}", status_code=303)
    return RedirectResponse(f"/models?msg={quote('evaluated ' + name)}#eval-{quote(name)}", status_code=303)


@page(role="engineer")
async def models_promote(st: Station, request: Request) -> Response:
    from .promotion import promote, reload_controller, resolve_candidate

    form = await request.form()
    name = str(form.get("candidate", ""))
    user = request.session["user"]
    try:
        tables = await _evaluate(st, name)  # on the labels as they are now, not as they were
        cand_table = tables[-1]
        if not cand_table["passed"]:
            st.store.add_promotion(
                user,
                str(tables[0]["model"]),
                str(cand_table["model"]),
                st.settings.line_model,
                "refused: " + "; ".join(cand_table["problems"]),
            )
            return PlainError(
                409, "promotion refused: the candidate fails the safety table: " + "; ".join(cand_table["problems"])
            )
        dest = await asyncio.to_thread(
            promote, resolve_candidate(st.settings.candidates_dir, name), st.settings.line_model
        )
    except SorterError as err:
        return PlainError(409, f"promotion refused: {err}")
    note = reload_controller(st.settings.controller_pidfile, st.settings.reload_command)
    st.store.add_promotion(
        user,
        str(tables[0]["model"]),
        str(cand_table["model"]),
        st.settings.line_model,
        f"promoted to {dest.name}; {note}",
    )
    return RedirectResponse(f"/models?msg={quote('promoted ' + name + ': ' + note)}", status_code=303)


# ---------------------------------------------------------------- app


class SecurityHeaders:
    """Headers on every response: no framing, no sniffing, scripts and styles from this server only."""

    HEADERS = [
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
            b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                # Server-Timing: the server's own time for this request (browsers and the benchmark read it)
                timing = f"app;dur={(time.perf_counter() - t0) * 1000:.2f}".encode()
                message["headers"] = list(message["headers"]) + self.HEADERS + [(b"server-timing", timing)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _watch(st: Station) -> None:
    while True:
        await asyncio.to_thread(st.watcher.refresh)
        await asyncio.sleep(st.settings.refresh_s)


def create_app(settings: StationSettings, *, store: StationStore | None = None, watch: bool = True) -> Starlette:
    """The station as an ASGI application (serve it with uvicorn, or test it with a test client).

    ``watch=False`` leaves the periodic refresh to the caller (``app.state.station.watcher.refresh()``).
    """
    station = Station(settings, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(station.watcher.refresh)
        task = asyncio.create_task(_watch(station)) if watch else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            station.audit.close()

    static = Path(__file__).parent / "static"
    routes = [
        Route("/", lambda r: RedirectResponse("/review", status_code=303)),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/status", status_page),
        Route("/status.json", status_json),
        Route("/review", review_page),
        Route("/review/next", review_next),
        Route("/review/item/{item_id:str}", item_page),
        Route("/review/verdict", verdict, methods=["POST"]),
        Route("/image/{item_id:str}/{kind:str}.png", image),
        Route("/models", models_page),
        Route("/models/evaluate", models_evaluate, methods=["POST"]),
        Route("/models/promote", models_promote, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=station.store.secret_key(),
            session_cookie="sorter_station",
            max_age=SESSION_MAX_AGE_S,
            same_site="strict",
            https_only=settings.secure_cookies,
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.station = station
    return app
