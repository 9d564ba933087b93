"""identity's metrics, read through the OpenTelemetry SDK the way an exporter reads them."""

from __future__ import annotations

from identity.sessions import SignInCounter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

from .identity_support import Idp, sign_in, sign_up


def sign_ins_by_outcome(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    counts: dict[str, int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "kizuna.identity.sign_ins":
                    # A monotonic sum (a counter): exported as kizuna_identity_sign_ins_total.
                    assert isinstance(metric.data, Sum) and metric.data.is_monotonic
                    for point in metric.data.data_points:
                        counts[str((point.attributes or {})["outcome"])] = int(point.value)
    return counts


async def test_sign_ins_are_counted_by_outcome(idp_sqlite: Idp) -> None:
    reader = InMemoryMetricReader()
    idp_sqlite.provider.sign_ins = SignInCounter(MeterProvider(metric_readers=[reader]))
    await sign_up(idp_sqlite.browser(), "counted@example.com")  # signing up is not a sign-in
    assert sign_ins_by_outcome(reader) == {}

    browser = idp_sqlite.browser()
    assert (await sign_in(browser, "counted@example.com")).status_code == 303
    for _ in range(5):
        assert (await sign_in(browser, "counted@example.com", "not the password")).status_code == 401
    assert (await sign_in(browser, "nobody@example.com", "not the password")).status_code == 401
    assert (await sign_in(browser, "counted@example.com")).status_code == 429

    assert sign_ins_by_outcome(reader) == {"success": 1, "failure": 6, "throttled": 1}
