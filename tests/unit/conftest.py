"""Unit-test fixtures: the stub Ray Jobs API (``stub_ray.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from stub_ray import StubRay, serve


@pytest.fixture
def stub_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubRay]:
    stub, server = serve(monkeypatch)
    yield stub
    server.shutdown()
