"""schemathesis against the gateway's own OpenAPI document, on the real database and broker: no server
error, and every answer's status code, content type, headers and body as documented. Bounded examples
per operation (well under a minute in all)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case
from schemathesis.generation import GenerationMode

from tests.support.infra import Infra

EXAMPLES = 30
# every check but "schema-valid data is accepted": JSON Schema cannot say "no NUL or lone surrogate at
# any depth of free-form metadata", nor the metadata byte cap, so some schema-valid bodies are refused
# with a (documented) 422, as they must be
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture
def admin_key(clean_db: Infra, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Keys required, as in production (schemathesis also checks that a request without one is refused),
    and one that may do anything, without a rate limit in the way."""
    from db import keys
    from db.session import transaction
    from gateway.settings import get_gateway_settings

    monkeypatch.setenv("ATELIER_GATEWAY_REQUIRE_KEYS", "true")
    get_gateway_settings.cache_clear()
    with transaction() as session:
        _, secret = keys.create_key(session, ["admin"], name="schemathesis", rate_limit="100000/second")
    yield secret
    monkeypatch.delenv("ATELIER_GATEWAY_REQUIRE_KEYS")
    get_gateway_settings.cache_clear()


def test_the_gateway_answers_as_its_openapi_says(admin_key: str) -> None:
    # loaded here, not at collection: the app's broker connection is configured when it is imported,
    # which must happen once the infra servers run (schemathesis.pytest.from_fixture fails on pytest 9)
    from gateway.app import app

    authorized = {"Authorization": f"Bearer {admin_key}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            def answers_as_documented(case: Case) -> None:  # type: ignore[type-arg]
                case.call_and_validate(headers=authorized, excluded_checks=EXCLUDED)

            try:
                answers_as_documented()
            except Unsatisfiable:  # nothing of this operation can be made invalid: it takes no input
                assert mode is GenerationMode.NEGATIVE and not operation.body and not len(operation.query)
