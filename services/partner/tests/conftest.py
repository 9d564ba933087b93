"""partner as a real process (`python -m partner`) against the REAL points and fintech services.

The kit's `ecosystem` fixture starts points and fintech on fresh databases and makes members with
points and a card; this module adds partner itself, registered at the test issuer with exactly
the scopes its declaration needs, as identity registers it under `make up`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kizuna.kit.declaration import of_package
from kizuna.kit.testing import ServiceProcess
from kizuna.kit.testing_stack import Ecosystem


@pytest.fixture(scope="module")
def ecosystem_env() -> dict[str, dict[str, str]]:
    # Only the base rate, so that what partner earns does not depend on the member's other services.
    return {"points": {"EARN_BONUS_BP_PER_SERVICE": "0"}}


@pytest.fixture(scope="module")
def partner_service(ecosystem: Ecosystem, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    declared = of_package("partner")
    secret = ecosystem.register_client("partner", " ".join(declared.client_scopes))
    work = tmp_path_factory.mktemp("partner")
    env = {
        **ecosystem.env_for("partner", secret),
        "KIZUNA_DATA_DIR": str(work),
        "LOG_FORMAT": "json",
        "GRANT_INTERVAL_SECONDS": "0.3",
    }
    process = ServiceProcess("partner", env, log_path=work / "partner.log")
    try:
        process.start()
        yield process
    finally:
        process.stop()
