"""The inspector's web application: the API (api_v1.py), the pages (pages.py) and their static files, as one ASGI app.

`create_app` is all `inspector serve` needs: it hands the app to uvicorn, and calls
`stop_streams(app)` when it is told to stop, before uvicorn's graceful shutdown (which waits
for every open response, and an event stream or a wait would otherwise hold it).

Here too is what holds for every response: errors as `{"error": ...}` (FastAPI's 422 for a
bad parameter becomes a 400 like the rest), `X-Content-Type-Options: nosniff`, no referrer,
and a Content-Security-Policy (the pages', the preview's, or none-at-all for JSON). There is
no /docs: its UI loads from a CDN, and the lab works offline; the OpenAPI document is at
/api/v1/openapi.json.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maillab_inspector.catalogue import Catalogue
from maillab_inspector.config import InspectorConfig
from maillab_inspector.web import api_v1, chaos, pages
from maillab_inspector.web.api_v1 import KEEPALIVE_SECONDS, ApiError, WebState
from maillab_inspector.web.quick_wait import QuickWait

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
API_DESCRIPTION = (
    "maillab's inspector: the messages the lab received, searchable (the query syntax is in docs/api.md), "
    "waitable and streamed as they arrive. Every error is a JSON object with one `error` field."
)


def create_app(
    catalogue: Catalogue,
    forward_root: Path,
    manifest: Path | None,
    *,
    keepalive: float = KEEPALIVE_SECONDS,
    hosts: Collection[str] | None = None,
    chaos_dir: Path = InspectorConfig.chaos_dir,
) -> FastAPI:
    """The web view and the API over `catalogue`, whose records are in the folder `forward_root`.

    `manifest`: the latest batch manifest (`/api/v1/verify/latest`, the /verify page), if any.
    `keepalive`: seconds between comments on an idle event stream.
    `hosts`: the only names a request's Host (and the Origin of a request that changes something) may give;
    any when None.
    `chaos_dir`: the fault-injection rules' folder, shared with the server (/api/v1/chaos, the /chaos page).
    """
    state = WebState(
        catalogue=catalogue, forward_root=forward_root, manifest=manifest, chaos_dir=chaos_dir, keepalive=keepalive
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.streams.close()
        state.wakeups.close()

    app = FastAPI(
        title="maillab inspector",
        version="1",
        description=API_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.web = state
    app.include_router(api_v1.router)
    app.include_router(chaos.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _bad_parameter)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(QuickWait, state=state)  # inside the two below: they hold for its answers too
    app.add_middleware(SecurityHeaders)
    if hosts is not None:
        app.add_middleware(KnownHostsOnly, hosts=frozenset(host.lower() for host in hosts))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def stop_streams(app: FastAPI) -> None:
    """End every open event stream and wait now (from any thread), and any later one as it starts."""
    state: WebState = app.state.web
    state.streams.close()


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _bad_parameter(request: Request, exc: Exception) -> Response:
    """FastAPI's validation errors (422) as a 400 that names each bad parameter."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": api_v1.validation_problems(exc)}, status_code=400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    error = f"{detail.lower()}: {request.url.path[:200]}" if exc.status_code in (404, 405) else detail
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route on the path only (GET /messages, not DELETE).
        headers["Allow"] = ", ".join(_methods(request))
    return JSONResponse({"error": error}, status_code=exc.status_code, headers=headers)


def _methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path."""
    scope = {**request.scope, "method": "GET"}
    methods: set[str] = set()
    for route in (*api_v1.router.routes, *chaos.router.routes, *pages.router.routes):
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path[:200], exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}): a bug in the inspector"}, status_code=500)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document without FastAPI's 422 answers: a bad parameter is a 400 here, as documented per route."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {"description": "A bad parameter: `error` names it", "content": error_body}
                for status, response in responses.items():
                    # FastAPI gives every answer of a route its media type: errors are JSON whatever the route serves.
                    content: dict[str, Any] = response.get("content", {})
                    if status.startswith("4") and "application/json" not in content:
                        first: dict[str, Any] = next(iter(content.values()), {})
                        schema_of = first.get("schema")
                        response["content"] = {"application/json": {"schema": schema_of}} if schema_of else error_body
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        if "ErrorBody" not in components:
            components["ErrorBody"] = api_v1.ErrorBody.model_json_schema()
        # POST /verify reads its body itself (as `inspector verify` reads a file): its schema is added here.
        manifest = api_v1.ManifestBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(manifest.pop("$defs", {}))
        components["ManifestBody"] = manifest
        components["ChaosRules"] = chaos.ChaosRules.model_json_schema()  # PUT /chaos reads its body itself too
        app.openapi_schema = schema
    return app.openapi_schema


class SecurityHeaders:
    """What every response carries unless its route set its own: nosniff, no referrer, no framing elsewhere, a CSP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = API_POLICY if str(scope.get("path", "")).startswith("/api/") else pages.PAGE_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                headers.setdefault("X-Frame-Options", "SAMEORIGIN")
                headers.setdefault("Content-Security-Policy", policy)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class KnownHostsOnly:
    """Refuses a request whose Host is neither an IP address nor one of `hosts` (421), and a request
    that may change something (any method but GET and HEAD: POST, PUT, DELETE) whose Origin is neither (403).

    A lab on 127.0.0.1 is still reachable from any web page its user visits, through DNS
    rebinding: the page's own name made to point at 127.0.0.1 makes its requests same-origin
    with the lab, Host and all, and could read every message and delete them. The Host tells:
    it is then the attacker's name. An IP address as the Host cannot be rebound (the page was
    loaded from that address, the lab's own), so any is answered: 127.0.0.1, and the engine's
    gateway address where the lab is reached from another container.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.hosts:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = _host_name(headers.get("host", ""))
        origin = headers.get("origin")
        if not self._known(host):
            answer = JSONResponse({"error": f"this inspector does not answer to the host {host[:80]!r}"}, 421)
        elif origin is not None and scope["method"] not in ("GET", "HEAD") and not self._known(_host_name(origin)):
            answer = JSONResponse({"error": f"requests from {origin[:80]!r} may not change anything"}, 403)
        else:
            await self.app(scope, receive, send)
            return
        await answer(scope, receive, send)

    def _known(self, name: str) -> bool:
        if name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def _host_name(value: str) -> str:
    """The host name of a Host header or an Origin, lowercased, without port or brackets."""
    try:
        name = urlsplit(value if "//" in value else f"//{value}").hostname
    except ValueError:
        return ""
    return (name or "").lower()
