"""schemathesis over relay's own OpenAPI document, against a live relay: no request it can
make, valid or not, gets a 5xx or an answer outside the document (status, media type, body)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS

from relay.limits import OFF
from relay.settings import Settings
from tests.conftest import LiveRelay, serve_in_thread

#: the checks the issue asks for: no server error, and every answer as documented
CHECK_NAMES = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
]


@pytest.fixture(scope="module")
def documented() -> Iterator[LiveRelay]:
    # (the API's rate off: hundreds of generated requests from one IP are the point here)
    with serve_in_thread(Settings(api_rate=OFF, publish_rate=OFF, join_rate=OFF)) as live:
        yield live


def operations(url: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(url + "/api/v1/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_the_document_loads_with_every_operation(documented: LiveRelay) -> None:
    names = sorted(op.label for op in operations(documented.url))
    assert len(names) == 9, names


@pytest.mark.parametrize("index", range(9))
def test_no_request_gets_a_5xx_or_an_undocumented_answer(documented: LiveRelay, index: int) -> None:
    """One operation of the document (in its order), a few dozen generated requests."""
    operation = operations(documented.url)[index]
    checks = CHECKS.get_by_names(CHECK_NAMES)

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=documented.url, checks=checks)

    run()
