"""A property-based fuzz of every service's REST API from its own OpenAPI document (schemathesis):
every operation gets generated requests, valid and invalid, with no credentials, a member's token
and a service's token. However wrong the input, no answer is a server error (5xx).

The number of examples per operation is bounded (FUZZ_EXAMPLES, default 6) and generation is
derandomized, so a failure reproduces and the whole run stays within about a minute.
FUZZ_SERVICES=shop,travel fuzzes only those (with identity).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from fuzz_support import Stack, declared
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
SERVICES = [d.name for d in declared()]
# Generated requests that would end the session and tokens the fuzz runs with, not find a bug.
SKIP = {
    ("identity", "POST", "/account/delete"),
    ("identity", "POST", "/account/sessions/end-all"),
}


def _auths(stack: Stack, service: str) -> list[tuple[str, dict[str, str]]]:
    return [
        ("anonymous", {}),
        ("member", {"Authorization": f"Bearer {stack.member_token(service)}"}),
        ("service", {"Authorization": f"Bearer {stack.service_token(service)}"}),
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_no_generated_request_gets_a_server_error(stack: Stack, service: str) -> None:
    base_url = stack.urls[service]
    schema = schemathesis.openapi.from_dict(httpx.get(f"{base_url}/openapi.json", timeout=10).json())
    auths = _auths(stack, service)
    server_errors: list[str] = []
    calls = 0

    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (service, operation.method.upper(), operation.path) in SKIP:
                continue

            cases = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
            )

            @given(case=cases, auth=st.sampled_from(auths))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: Any, auth: tuple[str, dict[str, str]]) -> None:
                nonlocal calls
                response = case.call(base_url=base_url, session=session, headers=auth[1], timeout=15)
                calls += 1
                if response.status_code >= 500:
                    request = response.request
                    server_errors.append(
                        f"{response.status_code} {request.method} {request.url} as {auth[0]}"
                        f" body={(request.body or b'')[:200]!r}: {response.text[:200]}"
                    )

            fuzz()

    assert calls > 0
    report = "\n".join(server_errors[:30])
    assert server_errors == [], f"{len(server_errors)} of {calls} requests got a 5xx:\n{report}"
