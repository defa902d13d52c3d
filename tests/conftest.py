"""Collection order: the longest tests first, so that under `pytest -n 2 --dist worksteal`
(scripts/test.sh) they start at once instead of one of them running alone at the end while
the other worker idles. The longest are the full-size parity tests (marked slow, minutes)
and the notebooks (about a minute each); the rest keep their order."""

from __future__ import annotations


def _rank(item) -> int:
    if item.get_closest_marker("slow") is not None:
        return 0
    if item.nodeid.startswith("tests/test_notebooks.py"):
        return 1
    return 2


def pytest_collection_modifyitems(session, config, items) -> None:
    items.sort(key=_rank)  # stable: the order within each rank is the collection's
