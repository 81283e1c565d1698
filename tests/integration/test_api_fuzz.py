"""Schemathesis against the running API (a real ``enrich api`` server process on real Redis): every route,
with a key and without one, must answer no 5xx and nothing that breaks its documented schema. Bounded:
a fixed number of examples per operation (CI time stays modest). The SSE routes are fuzzed too; their
(endless) bodies are not read, their status and content type are checked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from api.main import create_app
from enrich.settings import Settings
from tests.integration.api_util import (
    api_process,
    car_row,
    cleanup,
    create_key,
    outlier,
    state_doc,
    write_states,
)

pytestmark = pytest.mark.integration
EXAMPLES = 30
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(hypothesis.HealthCheck),
)


@pytest.fixture(scope="module")
def running_api(
    redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    token = f"fz{uuid.uuid4().hex[:8]}"
    s = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        state_prefix=f"{token}:state:",
        api_prefix=f"{token}:api:",
        alerts_prefix=f"{token}:alerts:",
        snapshot_prefix=f"{token}:snap:",
    )
    rows = [car_row(c, "beta" if c % 2 else "prod", "pilot" if c % 3 else "prod") for c in range(0, 12)]
    write_states(
        s, [state_doc(r["car_id"], r) for r in rows], [outlier(f"i{r['car_id']}", r) for r in rows[:4]]
    )
    key = create_key(s, "fuzz-ops", role="ops")
    try:
        with api_process(s, tmp_path_factory.mktemp("fuzz") / "api.log") as base:
            yield base, key
    finally:
        cleanup(s)


# The document the server serves (same code); loaded here because schemathesis' lazy fixture loader does
# not work with pytest 9. test_served_schema_is_the_same checks they are equal.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
SSE = r"events$"


def excluded(case: Any) -> list[Any]:
    """Checks that cannot apply to this case. Opaque cursors, bounding-box ranges and silences (matcher
    regexes, at most 90 days) are valid or not beyond what JSON Schema can say: a schema-valid value may be
    refused there with a 400/422 problem — every other check stays."""
    semantic = bool({"cursor", "bbox"} & set(case.query or {})) or case.path == "/v1/silences"
    return [positive_data_acceptance] if semantic else []


@schema.exclude(path_regex=SSE).parametrize()
@SETTINGS
def test_fuzz_with_a_key(case: Any, running_api: tuple[str, str]) -> None:
    base, key = running_api
    case.call_and_validate(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10, excluded_checks=excluded(case)
    )


@schema.exclude(path_regex=SSE).parametrize()
@SETTINGS
def test_fuzz_without_a_key(case: Any, running_api: tuple[str, str]) -> None:
    # ignored_auth would send the key-less request again with made-up credentials and expect a 401: the
    # same as this test itself checks
    response = case.call_and_validate(
        base_url=running_api[0], excluded_checks=[ignored_auth, *excluded(case)], timeout=10
    )
    if case.path.startswith("/v1/"):
        # a body that is not JSON is refused (400) before the key is looked at: nothing about data leaks
        assert response.status_code in (400, 401, 405, 422), (case.path, response.status_code)


@schema.include(path_regex=SSE).parametrize()
@SETTINGS
def test_fuzz_event_streams(case: Any, running_api: tuple[str, str]) -> None:
    base, key = running_api
    for headers in ({"Authorization": f"Bearer {key}"}, {}):
        kwargs = case.as_transport_kwargs(base_url=base, headers={**(case.headers or {}), **headers})
        with requests.request(**kwargs, stream=True, timeout=10) as r:
            assert r.status_code < 500, (case.path, r.status_code)
            if r.status_code == 200:
                assert r.headers["content-type"].startswith("text/event-stream")
                assert next(r.iter_lines()) == b"retry: 2000"
            else:
                assert r.headers["content-type"] == "application/problem+json"
                assert r.status_code in (401, 404, 405, 422), r.status_code
            if not headers:
                assert r.status_code in (401, 405, 422)


def test_served_schema_is_the_same(running_api: tuple[str, str]) -> None:
    assert requests.get(f"{running_api[0]}/openapi.json", timeout=5).json() == schema.raw_schema
