"""Longest tests first, split evenly between the pytest-xdist workers, so that the workers
finish together instead of one running a minute-long test alone at the end.

Every run records each test's duration (setup + call + teardown) in pytest's cache, and the
next run orders by them; a fresh checkout (CI) has no cache and uses ``tests/durations.json``,
the figures of a recorded run (``python -m tests._slowest_first`` copies the cache's figures
there). A test with no figure counts as short.

xdist's worksteal scheduler hands each of N workers one contiguous share of the collection
(the first N-th, the next, ...) and lets an idle worker take the tail of a busy one's queue.
So the collection is laid out as N consecutive shares of those sizes, each balanced by
recorded time (longest test first, into the least-loaded share with room), and within a
share the module holding the longest test comes first. A module's tests stay together and in
their own order, so its module-scoped fixtures (servers, fake services) start once per
worker. The tails are the shortest tests: what is stolen at the end costs little.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

CACHE_KEY = "gemini-sweep/test-durations"
RECORDED = Path(__file__).with_name("durations.json")
UNKNOWN_S = 0.2


def _recorded(config: pytest.Config) -> dict[str, float]:
    durations: dict[str, float] = {}
    if RECORDED.is_file():
        durations.update(json.loads(RECORDED.read_text(encoding="utf-8")))
    cache = getattr(config, "cache", None)
    if cache is not None:
        durations.update(cache.get(CACHE_KEY, {}))
    return durations


def _share_sizes(n_items: int, n_workers: int) -> list[int]:
    """How many tests worksteal first sends each worker (xdist's own arithmetic)."""
    sizes, left = [], n_items
    for remaining in range(n_workers, 0, -1):
        sizes.append(left // remaining)
        left -= sizes[-1]
    return sizes


def slowest_first(items: list[pytest.Item], durations: dict[str, float],
                  n_workers: int) -> list[pytest.Item]:
    def seconds(item: pytest.Item) -> float:
        return durations.get(item.nodeid, UNKNOWN_S)

    sizes = _share_sizes(len(items), max(1, n_workers))
    shares: list[list[pytest.Item]] = [[] for _ in sizes]
    loads = [0.0] * len(sizes)
    for item in sorted(items, key=seconds, reverse=True):
        open_shares = [i for i, share in enumerate(shares) if len(share) < sizes[i]]
        target = min(open_shares, key=lambda i: loads[i])
        shares[target].append(item)
        loads[target] += seconds(item)

    position = {id(item): index for index, item in enumerate(items)}
    ordered: list[pytest.Item] = []
    for share in shares:
        by_module: dict[str, list[pytest.Item]] = defaultdict(list)
        for item in sorted(share, key=lambda it: position[id(it)]):
            by_module[item.nodeid.split("::")[0]].append(item)
        modules = sorted(by_module.values(),
                         key=lambda tests: max(seconds(t) for t in tests), reverse=True)
        ordered.extend(item for tests in modules for item in tests)
    return ordered


@pytest.hookimpl(trylast=True)  # after -k/-m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    n_workers = int(workerinput["workercount"]) if workerinput else 1
    items[:] = slowest_first(items, _recorded(config), n_workers)


class _DurationRecorder:
    """On the controller (or a run without xdist): each test's time, saved at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(session.config, "cache", None)
        if cache is None or not self.seconds:
            return
        durations = cache.get(CACHE_KEY, {})
        durations.update({nodeid: round(s, 2) for nodeid, s in self.seconds.items()})
        cache.set(CACHE_KEY, durations)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_DurationRecorder(), "gemini-sweep-duration-recorder")


def main() -> None:
    """Copy the cached durations (of tests over 0.5 s) to ``tests/durations.json``."""
    cache_file = (RECORDED.parent.parent / ".pytest_cache" / "v" / CACHE_KEY)
    durations = json.loads(cache_file.read_text(encoding="utf-8"))
    kept = {nodeid: s for nodeid, s in sorted(durations.items()) if s >= 0.5}
    RECORDED.write_text(json.dumps(kept, indent=1) + "\n", encoding="utf-8")
    print(f"{len(kept)} durations written to {RECORDED}")  # noqa: T201


if __name__ == "__main__":
    main()
