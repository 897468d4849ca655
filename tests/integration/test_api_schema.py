"""The inspector's API against its own OpenAPI document, with schemathesis: a bounded run on the real container.

Every operation gets generated requests, valid ones and invalid ones: none may answer 500,
and every answer must be one the document lists, with the content type and the body schema
it gives. A few messages are catalogued first, and half the generated message ids are
replaced with real ones, so that the routes of one message answer with content, not only 404s.

The document is read from the running container, so the run drives Hypothesis itself
(`APIOperation.as_strategy` under `@given`) rather than through schemathesis's pytest
plugin, whose lazy loader does not run on this pytest. Bounded so that the module takes a
few minutes at most: `/events` is left out (a stream that never ends is no response to
validate; test_api.py reads it), a wait waits a fraction of a second at most, and a DELETE
removes messages from one domain kept for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err

from tests.integration.conftest import Lab, started_lab

pytestmark = pytest.mark.integration

EXAMPLES = 40  # per operation, valid and invalid together
WAIT_AT_MOST = 0.5  # seconds a generated wait may wait
DELETABLE = "deletable.test"  # the only domain a generated DELETE may remove messages from
LEFT_OUT = {"/api/v1/events"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def schema_lab(images: dict[str, str]) -> Iterator[Lab]:
    yield from started_lab(images, ("serve",))


@pytest.fixture(scope="module")
def message_ids(schema_lab: Lab) -> list[str]:
    """Messages with attachments and HTML bodies, in two domains, one of them DELETABLE; the others' ids."""
    code, output = schema_lab.run_agent(
        "batch", "--count", "6", "--attachments", "2", "--html", "--seed", "201", "--domains", f"fuzz.test,{DELETABLE}"
    )
    assert code == 0, output
    with httpx.Client(base_url=schema_lab.api_url, timeout=90) as api:
        response = api.get("/wait", params={"count": 6, "timeout": 60})
        assert response.status_code == 200, response.text
        messages = api.get("/messages", params={"domain": "fuzz.test"}).json()["messages"]
    return [message["id"] for message in messages]


def bounded(case: Case[Any], message_ids: list[str]) -> None:
    """Keep a generated request within the run's bounds (see the module's docstring), its other values as generated."""
    query = case.query if isinstance(case.query, dict) else {}
    if case.path.endswith("/wait"):
        timeout = query.get("timeout")
        try:
            too_long = timeout is None or WAIT_AT_MOST < float(timeout) <= 300
        except (TypeError, ValueError, OverflowError):
            too_long = False  # not a number: a 400 at once
        if too_long:
            case.query = {**query, "timeout": WAIT_AT_MOST}
    if case.method.upper() == "DELETE":
        case.query = {**query, "domain": DELETABLE}
    path_parameters = case.path_parameters if isinstance(case.path_parameters, dict) else {}
    generated = path_parameters.get("id")
    if isinstance(generated, str) and len(generated) % 2 == 0:
        case.path_parameters = {**path_parameters, "id": message_ids[len(generated) % len(message_ids)]}


def test_every_operation_answers_as_its_schema_says_and_never_500(schema_lab: Lab, message_ids: list[str]) -> None:
    schema = schemathesis.openapi.from_url(f"{schema_lab.api_url}/openapi.json", timeout=30)
    root = schema_lab.api_url.removesuffix("/api/v1")
    exercised, failures = [], []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the document: {result.err()}")
            continue
        operation = result.ok()
        if operation.path in LEFT_OUT:
            continue
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def exercise(case: Case[Any]) -> None:
            bounded(case, message_ids)
            case.call_and_validate(base_url=root, checks=CHECKS, timeout=30)

        try:
            exercise()
        except (Exception, FailureGroup) as exc:  # every operation runs; each failure is reported below
            failures.append(f"{operation.label}: {exc}")
        exercised.append(operation.label)
    assert len(exercised) >= 10, f"the document has too few operations: {exercised}"
    assert "GET /api/v1/messages/{id}/attachments/{n}" in exercised
    assert not failures, "\n\n".join(failures)
