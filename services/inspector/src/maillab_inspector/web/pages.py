"""The pages a person reads: the mail view (/), the verify report (/verify) and the fault-injection
rules (/chaos), rendered on the server.

They read the same documents as the API (api_v1.py): the first page of the list and the
domains come with the page, and app.js takes it from there over the API (search, the
message view) and the event stream (the list and the counts, live). Every text from a
message reaches the page through Jinja2's autoescaping, or through `textContent` in app.js;
the page's Content-Security-Policy allows only the lab's own scripts and styles. The same holds
for /chaos, whose rules a user wrote: chaos.js refreshes it every second from GET /api/v1/chaos
and changes the rules with PUT and DELETE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Query as Param
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from maillab_inspector.render import VERIFY_COLUMNS
from maillab_inspector.web.api_v1 import (
    ApiError,
    Selection,
    State,
    latest_manifest,
    parse_domain,
    parse_query,
    summary_document,
    verify_document,
)
from maillab_inspector.web.chaos import chaos_report, report_document

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
FIRST_PAGE = 100  # messages the page comes with; the list asks the API for more
CHAOS_REFRESH_MS = 1000  # how often /chaos asks for the rules and their counts

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def mail_view(
    request: Request,
    state: State,
    query: Annotated[str, Param()] = "",
    domain: Annotated[str, Param()] = "",
    id: Annotated[str, Param()] = "",
) -> Response:
    """The domains, the newest messages (those that match `query` in `domain`), and message `id` opened."""
    catalogue = state.catalogue
    latest = catalogue.commits.latest  # the event stream goes on from here: nothing is missed in between
    error = ""
    chosen = Selection(None, None)
    try:
        chosen = Selection(parse_query(query), parse_domain(domain))
    except ApiError as exc:
        error = exc.error
    domains = catalogue.domains()
    if error:
        total, messages, next_cursor = 0, [], None
    else:
        page = catalogue.messages(chosen.query, chosen.domain, FIRST_PAGE)
        total, next_cursor = page.total, page.next_cursor
        messages = [summary_document(summary) for summary in page.messages]
    context = {
        "query": query,
        "domain": chosen.domain or "",
        "open_id": id,
        "error": error,
        "latest": latest,
        "domains": domains,
        "all_count": sum(found.count for found in domains),
        "total": total,
        "messages": messages,
        "next_cursor": next_cursor or "",
        "page_size": FIRST_PAGE,
    }
    return TEMPLATES.TemplateResponse(request, "index.html", context, headers={"Content-Security-Policy": PAGE_POLICY})


@router.get("/verify", response_class=HTMLResponse)
def verify_page(request: Request, state: State) -> Response:
    """The report for the latest manifest, as `inspector verify` gives it (from the catalogue)."""
    report: dict[str, object] | None = None
    error = ""
    try:
        path, manifest = latest_manifest(state)
        report = verify_document(state, path.name, manifest)
    except ApiError as exc:
        error = exc.error
    context = {"report": report, "error": error, "columns": VERIFY_COLUMNS}
    return TEMPLATES.TemplateResponse(request, "verify.html", context, headers={"Content-Security-Policy": PAGE_POLICY})


@router.get("/chaos", response_class=HTMLResponse)
def chaos_page(request: Request, state: State) -> Response:
    """The rules the server applies, how often each fired, and a form to change them (chaos.js)."""
    error = ""
    try:
        report = chaos_report(state)
    except ApiError as exc:
        report, error = report_document(None, None), exc.error
    context = {"report": report, "error": error, "text": rules_text(report), "refresh_ms": CHAOS_REFRESH_MS}
    return TEMPLATES.TemplateResponse(request, "chaos.html", context, headers={"Content-Security-Policy": PAGE_POLICY})


def rules_text(report: dict[str, Any]) -> str:
    """What the form starts with: the rules set but not yet applied, else those the server applies."""
    if report["pending"] is not None:
        return str(report["pending"]["text"])
    return "; ".join(str(rule["rule"]) for rule in report["rules"])
