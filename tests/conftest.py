"""Run the longest tests first, so that pytest-xdist's two workers finish together
instead of one of them running a long notebook alone at the end."""

from __future__ import annotations

import pytest

# Each takes 20 s or more on 2 CPU cores (measured with --durations).
LONG_FIRST = ("test_notebooks.py", "full_size", "sam_h", "sam_l", "session", "fine_tuned")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not any(word in item.nodeid for word in LONG_FIRST))
