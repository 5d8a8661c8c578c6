"""Runs schemathesis against a running service: every operation of its OpenAPI document, with data
that fits the document (positive) and data that does not (negative), bounded and repeatable.

Each answer is held to four checks: no 5xx, a status the document lists for the operation, a
documented content type, and a body that matches the documented schema. The run is derandomized
(the same examples every time) and bounded by `max_examples` per operation and mode, with a
Hypothesis deadline on each example.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import hypothesis
import jsonschema
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# Longest time one example (one request and its checks) may take.
DEADLINE = timedelta(seconds=5)
REQUEST_TIMEOUT = 10.0


@dataclass
class Report:
    """What a run did: requests per operation, the statuses they got, and what failed."""

    requests: Counter = field(default_factory=Counter)
    statuses: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def summary(self) -> str:
        lines = [f"{len(self.requests)} operations, {self.total} requests in {self.seconds:.1f} s"]
        for label in sorted(self.requests):
            statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses[label].items()))
            lines.append(f"  {label}: {self.requests[label]} requests ({statuses})")
        return "\n".join(lines)


def load(url: str) -> schemathesis.schemas.BaseSchema:
    """The OpenAPI document a service serves at `url`, checked against the OpenAPI 3.1 schema.

    schemathesis leaves out the operation that serves the document itself; the tests check that
    one directly."""
    return schemathesis.openapi.from_url(url, timeout=REQUEST_TIMEOUT)


def run(
    schema,
    base_url: str,
    max_examples: int,
    report: Report | None = None,
    path_parameters: dict | None = None,
    only: str | None = None,
) -> Report:
    """Sends up to `max_examples` requests per operation and mode; collects every failure.

    `only` restricts the run to one operation label (`GET /votes/{vote_id}`); `path_parameters`
    fixes path parameters (for example the id of a vote that exists)."""
    report = report or Report()
    started = time.monotonic()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if only is not None and operation.label != only:
            continue
        for mode in MODES:
            label = operation.label
            statuses = report.statuses.setdefault(label, Counter())
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @hypothesis.given(case=strategy)
            @hypothesis.settings(
                max_examples=max_examples,
                deadline=DEADLINE,
                derandomize=True,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
                print_blob=False,
            )
            def send(case):
                response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT)
                report.requests[label] += 1
                statuses[response.status_code] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                send()
            except Unsatisfiable:
                # An operation with no parameters and no body has nothing to make invalid.
                if mode is GenerationMode.POSITIVE:
                    report.failures.append(f"{label} ({mode.value}): no example could be generated")
            except (Exception, BaseExceptionGroup) as failure:  # noqa: BLE001 - every failure is reported
                report.failures.append(f"{label} ({mode.value}): {type(failure).__name__}: {failure}")
    session.close()
    report.seconds += time.monotonic() - started
    return report


def check_error_body(document: dict, response: requests.Response, status: int, code: str) -> None:
    """An answer the document cannot attach to an operation (an unknown path, another method, a
    body over the limit) is still the documented JSON error: `components/schemas/Error`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    schema = {"$ref": "#/components/schemas/Error", "components": document["components"]}
    jsonschema.validate(response.json(), schema, cls=jsonschema.Draft202012Validator)
    assert response.json()["error"]["code"] == code
