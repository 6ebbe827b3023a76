"""The admins' status page: GET / (the whole page), GET /fragment (its live part, which
static/status.js fetches every [http] refresh_s seconds) and GET /api/units (JSON for scripts).

Server-rendered with Jinja2, autoescaped: every value from a DICOM header or a failure reason is
text, never markup. UIDs, SOP classes, timings and reasons only, unless [http]
show_patient_ids asks for PatientID and AccessionNumber too. Endpoints are plain functions, so
Starlette runs them in its thread pool: database and file reads never block the event loop
(uvicorn's) that also answers /healthz and /metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from common.spool_layout import SpoolLayout
from common.units import UnitState
from molsub.web import overview
from molsub.web.actions import actions_enabled
from molsub.web.memo import Memo
from molsub.web.view import NodeView
from worker.delivery.store import ResultStore

HERE = Path(__file__).resolve().parent
MAX_HOURS = 24 * 14


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,  # the templates ship with the node: no stat per request
    )


def _state_filter(request: Request) -> UnitState | None:
    raw = request.query_params.get("state", "")
    if not raw:
        return None
    try:
        return UnitState(raw)
    except ValueError:
        known = ", ".join(UnitState)
        raise HTTPException(400, f"unknown state {raw!r}; known: {known}") from None


class StatusPage:
    """What GET /, /fragment and /api/units read, with their caches (per app)."""

    def __init__(self, view: NodeView) -> None:
        self.view = view
        self.templates = _templates()
        self.results = ResultStore(SpoolLayout.at(view.config.node.spool_dir).results)
        self.model = overview.ModelCache(view.config.model.bundle)
        self.destinations = overview.DestinationCache(view.config)
        self.patients = overview.PatientIds() if view.config.http.show_patient_ids else None
        # Ten open pages refreshing, or a script polling, cost one read and one rendering per
        # memo period and filter.
        self.fragments: Memo[str] = Memo()
        self.listings: Memo[list[dict[str, Any]]] = Memo()

    def _live(self, state: UnitState | None) -> Markup:
        """The live part (what /fragment answers and / embeds), rendered once per filter and
        memo period: with many rows, rendering costs more than reading."""

        def render() -> str:
            return self.templates.get_template("live.html").render(self._read(state))

        return Markup(self.fragments.get(state, render))

    def _read(self, state: UnitState | None) -> dict[str, Any]:
        now = time.time()
        since = now - overview.WINDOW_S
        db = self.view.db
        units = db.recent_units(since, state, limit=overview.PAGE_ROWS)
        window_ids = db.recent_unit_ids(since, limit=overview.MAX_ROWS)
        counts = db.state_counts(since)
        return {
            "state": state,
            "states": list(UnitState),
            "counts": counts,
            "total": sum(counts.values()),
            "rows": overview.unit_rows(units, self.patients, self.results),
            "max_rows": overview.PAGE_ROWS,
            "stages": [*overview.STAGE_LABELS.values(), "total"],
            "model": self.model.get(),
            "destinations": self.destinations.get(window_ids),
            "gauges": overview.read_gauges(self.view.registry),
            "size": overview.size,
            "show_patient_ids": self.patients is not None,
            "actions": actions_enabled(self.view.config.http),
            "updated": overview.utc(now),
            "refresh_ms": int(self.view.config.http.refresh_s * 1000),
        }

    def page(self, request: Request) -> Response:
        shell = self.templates.get_template("status.html")
        return HTMLResponse(
            shell.render(
                live=self._live(_state_filter(request)),
                actions=actions_enabled(self.view.config.http),
                refresh_ms=int(self.view.config.http.refresh_s * 1000),
            )
        )

    def fragment(self, request: Request) -> Response:
        return HTMLResponse(self._live(_state_filter(request)))

    def api_units(self, request: Request) -> Response:
        state = _state_filter(request)
        try:
            hours = float(request.query_params.get("hours", "24"))
        except ValueError:
            raise HTTPException(400, "hours must be a number") from None
        if not 0 < hours <= MAX_HOURS:
            raise HTTPException(400, f"hours must be in (0, {MAX_HOURS}]")

        def read() -> list[dict[str, Any]]:
            since = time.time() - hours * 3600
            return overview.as_json(self.view.db.recent_units(since, state, overview.MAX_ROWS))

        return JSONResponse(self.listings.get((state, hours), read))


def routes(view: NodeView) -> list[BaseRoute]:
    page = StatusPage(view)
    return [
        Route("/", page.page, methods=["GET"]),
        Route("/fragment", page.fragment, methods=["GET"]),
        Route("/api/units", page.api_units, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
