"""Fixtures of the end-to-end suite.  The session-wide ``stack`` itself is in ``tests/conftest.py`` so that
every suite shares one; the names below stay importable from here for the suites that build their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.livestack import (  # noqa: F401  (re-exported)
    ARTIFACTS,
    ROOT,
    Stack,
    create_database,
    drop_database,
    free_port,
)


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client() as client:
        yield client


@pytest.fixture
def tag() -> str:
    """Makes this test's user names its own: duplicates across tests would otherwise collide."""
    return uuid.uuid4().hex[:8]
