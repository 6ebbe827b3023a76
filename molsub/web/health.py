"""Placeholder until written: routes of the HTTP app (see app.py)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from molsub.web.view import NodeView


def routes(view: NodeView) -> list[BaseRoute]:
    return []
