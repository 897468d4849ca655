"""`GET /api/v1/wait` answered straight from ASGI: the route's answer without FastAPI's work per request.

A test suite waits for each message it sends, so at the server's full rate the inspector takes
hundreds of waits a second. Measured at 500 a second, FastAPI's dependency solving, response
validation and middleware layers took most of the HTTP thread, and the waits queued behind one
another for seconds. This middleware answers a wait whose parameters it reads plainly (the
`query` and `domain` as the route reads them, a `count` and `timeout` in plain digits, none
given twice) with `api_v1.wait_for_matches`, the route's own code, and the same JSONResponse.

Anything else goes on to the route (api_v1.wait), which stays the reference: it refuses a bad
parameter with its 400, and it is what the OpenAPI document describes. The middleware sits
inside the Host check and the security headers (app.py), so those hold for both.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from maillab_inspector.web.api_v1 import (
    PAGE_MAX,
    WAIT_MAX_SECONDS,
    ApiError,
    Selection,
    WebState,
    parse_domain,
    parse_query,
    wait_for_matches,
)

PATH = "/api/v1/wait"
PARAMETERS = ("query", "domain", "count", "timeout")
_COUNT = re.compile(r"[1-9][0-9]{0,3}")  # 1..9999; the limit is checked after
_TIMEOUT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,6})?")  # 0..999.999999 seconds; the limit is checked after


class QuickWait:
    def __init__(self, app: ASGIApp, state: WebState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == PATH:
            asked = read_wait(scope["query_string"])
            if asked is not None:
                status, document = await wait_for_matches(self.state, *asked)
                await JSONResponse(document, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def read_wait(query_string: bytes) -> tuple[Selection, int, float] | None:
    """The selection, count and timeout of a wait, read as the route reads them; None for anything the
    route should answer itself (a bad, unusual or repeated parameter)."""
    # As Starlette reads a query string (QueryParams), so that both read the same text.
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    given = {name: value for name, value in pairs if name in PARAMETERS}
    if len(given) != sum(1 for name, _ in pairs if name in PARAMETERS):
        return None  # a parameter given twice
    count_text, timeout_text = given.get("count", "1"), given.get("timeout", "10")
    if not _COUNT.fullmatch(count_text) or not _TIMEOUT.fullmatch(timeout_text):
        return None
    count, timeout = int(count_text), float(timeout_text)
    if count > PAGE_MAX or timeout > WAIT_MAX_SECONDS:
        return None
    try:
        return Selection(parse_query(given.get("query", "")), parse_domain(given.get("domain", ""))), count, timeout
    except ApiError:
        return None
