"""Fixtures for the deployment tests; helpers live in deploy_support.py."""

from __future__ import annotations

import pytest

from .deploy_support import DEPLOY, OVERLAYS, Rendered, kustomize, render_manifests

_cache: dict[str, Rendered] = {}


@pytest.fixture(scope="session", autouse=True)
def manifests() -> None:
    """The overlays include deploy/generated/, rendered from the declarations as it stands."""
    render_manifests()


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """Every overlay, rendered once per session."""
    if not _cache:
        for overlay in OVERLAYS:
            _cache[overlay] = kustomize(DEPLOY / "overlays" / overlay)
    return _cache
