"""Health probes and metrics of the node's HTTP app.

GET /healthz: 200 {"status": "ok"} whenever the process answers (liveness).
GET /readyz: 200 when every readiness check passed, else 503; the body lists each check with
its detail (molsub/health.py), for systemd, Docker and Kubernetes probes and for admins.
GET /metrics: the node's registry in Prometheus text format (molsub/metrics.py), computed at
most once per memo period (2 s, molsub/web/memo.py) however many scrapers ask.

The handlers are plain functions: Starlette runs them in its thread pool, so a slow check
(a Redis PING, an fsync) never blocks the event loop serving the other requests.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from molsub.web.memo import Memo
from molsub.web.view import NodeView


def routes(view: NodeView) -> list[BaseRoute]:
    exposition: Memo[bytes] = Memo()

    def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def readyz(request: Request) -> Response:
        readiness = view.readiness()
        return JSONResponse(readiness.as_dict(), status_code=200 if readiness.ready else 503)

    def metrics(request: Request) -> Response:
        text = exposition.get("metrics", lambda: generate_latest(view.registry))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
