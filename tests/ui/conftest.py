from __future__ import annotations

import pytest
from kizuna.kit.testing import split_from_module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Each language's walk through every page is long: one xdist unit each (each starts its stack).
    split_from_module(items, "tests/ui/test_pages_in_browser.py", lambda item: item.name)
