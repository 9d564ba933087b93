"""Every REST route of every declared service names the scope it needs: a route that takes a bearer
token depends on the kit's `member_scope`, `service_scope` or `any_scope`, never on a bare
`CurrentMember`/`CurrentPrincipal` (which only says *who* calls, not what they may do). A new
route without a scope fails here before it ships."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from kizuna.kit import auth, declaration

SCOPED = ("member_scope_", "service_scope_", "any_scope_")
BEARER = {auth._current_principal, auth._current_member}
DECLARED = [d.name for d in declaration.discover()]


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


def _flatten(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None)  # a router included into the app
        if nested is not None:
            yield from _flatten(nested.routes)


def _routes(name: str) -> list[APIRoute]:
    service = importlib.import_module(f"{name}.service").service
    runtime = SimpleNamespace(name=name, settings=SimpleNamespace(), state={})
    app = service.create_app(runtime)
    return list(_flatten(app.routes))


@pytest.mark.parametrize("name", DECLARED)
def test_every_bearer_route_declares_its_scope(name: str) -> None:
    routes = _routes(name)
    assert routes, f"{name} has no routes?"
    unscoped = []
    bearer_routes = 0
    for route in routes:
        calls = list(_calls(route.dependant))
        if not any(call in BEARER for call in calls):
            continue
        bearer_routes += 1
        if not any(getattr(call, "__name__", "").startswith(SCOPED) for call in calls):
            assert route.methods is not None, "an API route has its methods"
            unscoped.append(f"{sorted(route.methods)} {route.path}")
    assert unscoped == [], f"{name}: bearer routes without a declared scope"
    if name != declaration.ISSUER:  # identity checks its own tokens (OAuth endpoints, admin API)
        assert bearer_routes > 0


def test_the_scoped_dependencies_are_what_the_api_routes_use() -> None:
    """The member APIs of the services that have one are all scoped (not merely authenticated)."""
    api_routes = [
        r for name in DECLARED for r in _routes(name) if r.path.startswith(("/api/", "/merchant/", "/privacy/"))
    ]
    scoped = [r for r in api_routes if any(getattr(c, "__name__", "").startswith(SCOPED) for c in _calls(r.dependant))]
    assert len(scoped) >= 40, [r.path for r in scoped]
