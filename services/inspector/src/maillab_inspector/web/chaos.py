"""Fault injection over HTTP: GET, PUT and DELETE /api/v1/chaos, and the report the /chaos page shows.

The rules live in a folder both services mount (maillab_common.chaos_files): a PUT or DELETE
checks the rules and writes them to `rules.json`, as `maillab-server chaos set` does; the
server watches that file, applies a change within a second and reports it in `state.json`
with how often each rule has fired. The inspector never applies a rule itself: it shows what
the server reports, and what is set but not yet applied (`pending`).

A change answers once the server reports it applied (200), or after APPLY_SECONDS without
(202, `pending` set): the rules are saved either way, and the server applies them when it
runs. When another writer (the CLI, another request) replaces them before the server applies
them, the server never will: 409. Reading and writing the files, and the wait, block: they
run in the thread pool. A PUT reads its body itself, up to BODY_BYTES, before it parses it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from maillab_common.chaos import ChaosSyntaxError
from maillab_common.chaos_files import (
    ChaosFileError,
    ChaosState,
    RulesFile,
    Superseded,
    change_rules,
    read_rules,
    read_state,
)
from maillab_inspector.web.api_v1 import (
    ApiError,
    ErrorBody,
    Responses,
    State,
    WebState,
    answers,
    described,
    validation_problems,
)

APPLY_SECONDS = 2.0  # how long a change waits for the server to report it applied
RULES_CHARACTERS = 64 * 1024  # the most a PUT's rules may hold (the parser takes at most 100 rules)
BODY_BYTES = 128 * 1024  # the most a PUT's body may hold: room for the rules, escaped as JSON


# -- the documents ---------------------------------------------------------------------


class RuleFired(BaseModel):
    rule: str = Field(description="The rule as the server reads it (its canonical text)")
    fired: int = Field(description="Commands it acted on since the server applied it")
    matched: int = Field(description="Commands it was asked about (its stage and match fitted), fired or not")


class PendingRules(BaseModel):
    text: str = Field(description="The rules as set, which the server has not reported applied yet")
    generation: str = Field(description="The change's id: the server's `generation` once it applies them")
    set_at: str = Field(description="When they were set: ISO 8601, UTC")
    set_by: str = Field(description="Who set them: `http` (this API) or `cli` (maillab-server chaos set)")


class ChaosReport(BaseModel):
    reported: bool = Field(description="Whether the server has reported at all; false: no server has run on the folder")
    source: str = Field(
        description="Where the applied rules came from: `file` (set here or by the CLI), "
        "`environment` (MAILLAB_CHAOS), or `none`"
    )
    generation: str = Field(description="The change the server applies; '' for MAILLAB_CHAOS or no rules")
    rules: list[RuleFired] = Field(description="The rules the server applies, in order, with their counts")
    reserved_fired: int = Field(description="Replies to reserved recipients (rcpt-451@...) since the server started")
    updated_at: str = Field(description="When the server last reported: ISO 8601, UTC; '' before it has")
    problem: str = Field(description="Why the server did not apply the rules set; '' when it did")
    pending: PendingRules | None = Field(description="Rules set but not yet applied by the server; null when none")


class ChaosRules(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    rules: str = Field(
        max_length=RULES_CHARACTERS,
        description="The rules, separated by `;` (docs/chaos.md); empty clears them",
        examples=["rcpt reply=451 to=*@flaky.test times=2; data-end reply=452:4.3.1 p=0.1 seed=7"],
    )


class ChaosErrorBody(ErrorBody):
    position: int | None = Field(
        default=None, description="For a rule that does not parse: the 0-based offending character in `rules`"
    )
    rule: int | None = Field(default=None, description="For a rule that does not parse: which, from 1")


def chaos_report(state: WebState) -> dict[str, Any]:
    """What the server reports and what is set but not yet applied; ApiError 503 when the files cannot be read."""
    try:
        reported = read_state(state.chaos_dir)
        latest = read_rules(state.chaos_dir)
    except ChaosFileError as exc:
        raise ApiError(503, f"cannot read the fault-injection rules: {exc}") from None
    return report_document(reported, latest)


def report_document(reported: ChaosState | None, latest: RulesFile | None) -> dict[str, Any]:
    """The GET document: the server's state (None: it has not reported) and the rules file (None: none yet)."""
    pending = latest if latest is not None and (reported is None or reported.generation != latest.generation) else None
    document: dict[str, Any] = {
        "reported": reported is not None,
        "source": "none",
        "generation": "",
        "rules": [],
        "reserved_fired": 0,
        "updated_at": "",
        "problem": "",
        "pending": None if pending is None else asdict(pending),
    }
    if reported is not None:
        document |= {
            "source": reported.source,
            "generation": reported.generation,
            "rules": [asdict(rule) for rule in reported.rules],
            "reserved_fired": reported.reserved_fired,
            "updated_at": reported.updated_at,
            "problem": reported.problem,
        }
    return document


# -- the routes ------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1", tags=["chaos"], generate_unique_id_function=lambda route: route.name)

UNREADABLE: Responses = {503: described("The rules folder (MAILLAB_CHAOS_DIR) cannot be read")}
CHANGED: Responses = {
    200: {"description": "The server applies the rules: what it reports"},
    202: {
        "model": ChaosReport,
        "description": f"Saved, but the server did not report them applied within "
        f"{APPLY_SECONDS:g} s: `pending` holds them, and it applies them when it runs",
    },
    409: described(
        "Saved, but another change (from the CLI or another request) replaced them before the server "
        "applied them: it applies that one, never these"
    ),
    503: described("The rules folder (MAILLAB_CHAOS_DIR) cannot be read or written"),
}


@router.get("/chaos", response_model=ChaosReport, responses=UNREADABLE)
async def get_chaos(state: State) -> dict[str, object]:
    """The fault-injection rules the server applies, how often each has fired, and any change not yet applied."""
    return await run_in_threadpool(chaos_report, state)


@router.put(
    "/chaos",
    response_model=ChaosReport,
    responses=answers(
        CHANGED,
        {
            400: {"model": ChaosErrorBody, "description": 'A rule that does not parse, or a body not {"rules": "..."}'},
            413: described(f"The body is over {BODY_BYTES // 1024} KiB"),
        },
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChaosRules"}}},
        }
    },
)
async def set_chaos(state: State, request: Request) -> Any:
    """Replace the rules (`;`-separated, docs/chaos.md); answers once the server applies them, or 202 after 2 s."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_BYTES:
            raise ApiError(413, f"the body is over {BODY_BYTES // 1024} KiB")
    try:
        rules = ChaosRules.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(400, validation_problems(exc)) from None
    return await change(state, rules.rules)


@router.delete("/chaos", response_model=ChaosReport, responses=CHANGED)
async def clear_chaos(state: State) -> Any:
    """Clear the rules (MAILLAB_CHAOS's too, until new ones are set); answers as PUT does."""
    return await change(state, "")


async def change(state: WebState, text: str) -> Any:
    """Write `text` as the rules, wait for the server to report them applied, and answer what it reports."""
    try:
        await run_in_threadpool(change_rules, state.chaos_dir, text, "http", APPLY_SECONDS)
    except ChaosSyntaxError as exc:
        raise ApiError(400, f"rules: {exc}", exc.position - 1, rule=exc.rule) from None
    except ChaosFileError as exc:
        raise ApiError(503, f"cannot change the fault-injection rules: {exc}") from None
    except Superseded as exc:
        raise ApiError(409, f"saved, but {exc}") from None
    report = await run_in_threadpool(chaos_report, state)
    # Another change may have come meanwhile: 202 whenever what is set is not what the server applies.
    return report if report["pending"] is None else JSONResponse(report, status_code=202)
