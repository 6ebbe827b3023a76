"""The status page's actions: POST /api/units/{unit_id}/retry and /resend.

They change what the node does, so they need the token of node.toml's [http] (``token``, or the
first line of ``token_file``) as ``Authorization: Bearer <token>``; without one configured the
page is read-only and every action answers 403. Retry follows ``molsub retry``'s rules
(molsub/unit_actions.py) and wakes the dispatcher; resend runs ``molsub resend``'s code in one
background thread, so the request returns at once (202) and resends never overlap. Each action
is logged by unit UID and client address; answers are JSON ``{"error": ...}`` when refused.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from common.logs import LogStage, log_context
from common.settings import HttpSettings, NodeConfig
from common.spool_layout import SpoolLayout
from common.units import UnitState
from molsub.unit_actions import RetryOutcome, retry_unit
from molsub.web.view import NodeView
from worker.delivery.send import resend
from worker.delivery.store import SAFE_NAME, ResultNotFound, ResultStore

log = logging.getLogger(__name__)

READ_ONLY = "read-only: no [http] token configured"
Resender = Callable[[str, NodeConfig], dict[str, Any]]


def configured_token(http: HttpSettings) -> str:
    """The token actions need: ``token``, else the first line of ``token_file``; "" for none
    (an unreadable token_file counts as none: the page stays read-only, and says so in the log)."""
    if http.token:
        return http.token
    if http.token_file is None:
        return ""
    try:
        with open(http.token_file, encoding="utf-8") as handle:
            return handle.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("[http] token_file %s unreadable (%s): actions refused", http.token_file, exc)
        return ""


def actions_enabled(http: HttpSettings) -> bool:
    return bool(configured_token(http))


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _token_refused(request: Request, http: HttpSettings) -> Response | None:
    """403 when no token is configured, 401 when the request's is missing or wrong."""
    token = configured_token(http)
    if not token:
        return _error(403, READ_ONLY)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), token.encode("utf-8")
    ):
        return _error(
            401,
            "a valid token is needed: Authorization: Bearer <token>",
            **{"WWW-Authenticate": 'Bearer realm="molsub"'},
        )
    return None


class Actions:
    def __init__(self, view: NodeView, resender: Resender = resend) -> None:
        self.view = view
        self.resender = resender
        self.results = ResultStore(SpoolLayout.at(view.config.node.spool_dir).results)
        # One thread: resends run one after the other, never beside each other on one unit.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="molsub-resend")
        self.queued: set[str] = set()
        self.lock = threading.Lock()

    def _refused(self, request: Request, action: str, unit_id: str, client: str) -> Response | None:
        """The token check, then a unit id that is no UID (never echoed into the log)."""
        if refused := _token_refused(request, self.view.config.http):
            shown = unit_id if SAFE_NAME.match(unit_id) else "(not a UID)"
            log.warning("%s of unit %s from %s refused (%d)", action, shown, client,
                        refused.status_code)  # fmt: skip
            return refused
        if not SAFE_NAME.match(unit_id):
            return _error(404, "no such unit")
        return None

    def retry(self, request: Request) -> Response:
        unit_id = request.path_params["unit_id"]
        client = _client(request)
        if refused := self._refused(request, "retry", unit_id, client):
            return refused
        with log_context(unit=unit_id, stage=LogStage.HTTP):
            result = retry_unit(self.view.db, unit_id)
            if result.outcome is RetryOutcome.UNKNOWN:
                return _error(404, f"no unit {unit_id}")
            if result.outcome is RetryOutcome.WRONG_STATE:
                log.info(
                    "retry of unit %s from %s refused: it is %s", unit_id, client, result.state
                )
                return _error(409, f"unit {unit_id}: {result.message}")
            log.info("unit %s: retried from the status page by %s (was %s)", unit_id, client,
                     result.state)  # fmt: skip
            self.view.wake_dispatcher()
            return JSONResponse(
                {"unit_id": unit_id, "state": UnitState.READY, "message": result.message}
            )

    def resend(self, request: Request) -> Response:
        unit_id = request.path_params["unit_id"]
        client = _client(request)
        if refused := self._refused(request, "resend", unit_id, client):
            return refused
        with log_context(unit=unit_id, stage=LogStage.HTTP):
            unit = self.view.db.get_unit(unit_id)
            if unit is None:
                return _error(404, f"no unit {unit_id}")
            try:
                recorded = self.results.has_objects(unit_id)
            except ValueError:
                recorded = False
            if not recorded:
                return _error(
                    409, f"unit {unit_id} is {unit.state}: no result objects recorded to resend"
                )
            with self.lock:
                if unit_id in self.queued:
                    return _error(409, f"unit {unit_id}: a resend is already queued")
                self.queued.add(unit_id)
            log.info("unit %s: resend requested from the status page by %s", unit_id, client)
            self.executor.submit(self._resend, unit_id)
            return JSONResponse(
                {"unit_id": unit_id, "message": "resend queued; the outcome goes to the log"},
                status_code=202,
            )

    def _resend(self, unit_id: str) -> None:
        with log_context(unit=unit_id, stage=LogStage.HTTP):
            try:
                outcome = {k: str(v) for k, v in self.resender(unit_id, self.view.config).items()}
            except ResultNotFound as exc:
                log.warning("unit %s: resend failed: %s", unit_id, exc)
                return
            except Exception:  # the background thread must log, not swallow silently
                log.exception("unit %s: resend failed", unit_id)
                return
            finally:
                with self.lock:
                    self.queued.discard(unit_id)
            log.info(
                "unit %s: resent: %s",
                unit_id,
                ", ".join(f"{name} {state}" for name, state in outcome.items())
                or "no destinations",
            )
            self.view.delivered(unit_id, outcome)


def routes(view: NodeView, resender: Resender = resend) -> list[BaseRoute]:
    actions = Actions(view, resender)
    return [
        Route("/api/units/{unit_id}/retry", actions.retry, methods=["POST"]),
        Route("/api/units/{unit_id}/resend", actions.resend, methods=["POST"]),
    ]
