"""The Starlette app: health probes and metrics (health.py), the status page (page.py) and its
actions (actions.py), each handed the NodeView it needs.

Every response says it is not to be cached or framed and may load scripts and styles from this
origin only: the page shows the state of a node that holds patient images.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (plain ASGI: no per-request task, unlike
    Starlette's BaseHTTPMiddleware; the server shares its process with the DICOM receiver)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(view: NodeView) -> Starlette:
    """The node's HTTP app over ``view`` (the running node, or a test's spool)."""
    return Starlette(
        routes=[*health.routes(view), *page.routes(view), *actions.routes(view)],
        middleware=[Middleware(SecurityHeaders)],
    )
