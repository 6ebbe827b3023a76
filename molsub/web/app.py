"""The Starlette app: health probes and metrics (health.py), the status page (page.py) and its
actions (actions.py), each handed the NodeView it needs.

Every response says it is not to be cached or framed and may load scripts and styles from this
origin only: the page shows the state of a node that holds patient images.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from molsub.web import actions, health, page
from molsub.web.view import NodeView

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def create_app(view: NodeView) -> Starlette:
    """The node's HTTP app over ``view`` (the running node, or a test's spool)."""
    return Starlette(
        routes=[*health.routes(view), *page.routes(view), *actions.routes(view)],
        middleware=[Middleware(SecurityHeaders)],
    )
