"""Running a coroutine on a new event loop: uvloop's where it is installed, else asyncio's own.

uvloop roughly doubles what the agent sends and the server takes in a second
(docs/benchmarks.md); both services depend on it on the platforms it supports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
