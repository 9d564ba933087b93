"""The points service as fintech uses it: the kit's PointsClient, one per running service. Every
call carries an idempotency key derived from fintech's payment ID, so a retried payment step never
spends twice."""

from __future__ import annotations

from typing import Any

from kizuna.kit.points import PointsClient
from kizuna.kit.service import Runtime


def points_client(runtime: Runtime[Any]) -> PointsClient:
    client = runtime.state.get("points_client")
    if client is None:
        client = runtime.state["points_client"] = PointsClient(
            runtime.settings.points_addr, runtime.service_tokens, service="fintech"
        )
    return client  # type: ignore[no-any-return]
