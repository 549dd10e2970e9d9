"""schemathesis fuzzes every operation of the OpenAPI schema against a running service: no 5xx.

The operations are driven with plain Hypothesis (schemathesis' pytest plugin does not run under
pytest 9 here), a bounded number of examples each so the whole run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from .conftest import copy_version, running_service, serve_app, settings_for, stub_panel
from .stub_backend import StubBackend

EXAMPLES = 15  # per operation and generation mode (generating 90 KB bodies is slow on 2 cores)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, version_template: Path) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("fuzz")
    models = copy_version(version_template, tmp / "models")
    with serve_app(StubBackend(), ready_path="/v1/models") as stub:
        panel = stub_panel(tmp / "panel.yaml", stub + "/v1", ("unsure", "ok", "ok"))
        with running_service(settings_for(tmp, models, panel, max_body_bytes=2**18)) as url:
            yield schemathesis.openapi.from_url(url + "/openapi.json")


def test_every_operation_without_server_errors(api: Any) -> None:
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/route", "/v1/chat/completions", "/v1/feedback"}
    for op in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                _fuzz(op, mode)
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == schemathesis.GenerationMode.NEGATIVE


def _fuzz(op: Any, mode: Any) -> None:
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, print_blob=False)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=[not_a_server_error])

    run()
