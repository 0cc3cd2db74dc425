"""POST /events: a JSON batch → per-record strict checks → validate_events → one Arrow table.

Two layers, one report. JSON types are checked per record first (pydantic, strict: a boolean is
not a number, a string is not a number, unknown fields are refused); records that pass become
columns and go through :func:`shelf.schema.validate_events`, the same rules file ingest uses
(event types, timestamps with zones, rating and quantity ranges) which also pseudonymizes user
ids. Every refusal names the record's index and field path.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import TypeAdapter, ValidationError

from shelf.errors import InputError
from shelf.privacy import Pseudonymizer
from shelf.schema import EVENT_SCHEMA, EventRules, RecordError, ValidatedBatch, validate_events
from shelf.serving.api import EventIn, RecordProblem

_EVENT = TypeAdapter(EventIn)
_FIELDS = tuple(EventIn.model_fields)
_EXPECTED_TYPE = {
    "event_id": "a string or null",
    "user_id": "a string, an integer or null",
    "session_id": "a string, an integer or null",
    "item_id": "a string or an integer",
    "type": "a string",
    "timestamp": "an ISO 8601 string with a zone, or epoch seconds as a number",
    "value": "a JSON number or null (not a boolean or a string)",
    "price": "a JSON number >= 0 or null (not a boolean or a string)",
}


@dataclass(frozen=True)
class CheckedBatch:
    valid: pa.Table  # EVENT_SCHEMA, pseudonymized
    problems: list[RecordProblem]
    rejected: int


def batch_problem(field: str, value: str, expected: str) -> RecordProblem:
    return RecordProblem(index=None, loc=[field] if field else [], field=field, value=value[:80], expected=expected)


def _shown(value: Any) -> str:
    return "" if value is None else str(value)[:80]


def _pydantic_problems(index: int, record: Any, error: ValidationError) -> list[RecordProblem]:
    problems: dict[str, RecordProblem] = {}
    for e in error.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        if field in problems:
            continue  # a union reports each alternative; one line per field is enough
        if e["type"] == "extra_forbidden":
            expected = f"no such field; events have {', '.join(_FIELDS)}"
        elif e["type"] == "missing":
            expected = "a required field"
        elif e["type"].endswith("_type") or e["type"] in ("finite_number", "string_type"):
            expected = _EXPECTED_TYPE.get(field, e["msg"])
            if e["type"] == "finite_number":
                expected = "a finite number"
        else:
            expected = e["msg"]
        value = record.get(field) if isinstance(record, dict) else record
        problems[field] = RecordProblem(
            index=index, loc=["events", index, field] if field else ["events", index], field=field, value=_shown(value), expected=expected
        )
    return list(problems.values())


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def _timestamps(values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int | float) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else (v if isinstance(v, str) else repr(v)) for v in values], pa.string())


@dataclass
class _Job:
    table: pa.Table
    positions: list[int]
    result: ValidatedBatch | None = None
    error: BaseException | None = None
    done: bool = field(default=False)


class ValidationCoalescer:
    """Validates the records of concurrent requests in one ``validate_events`` call.

    A call costs tens of milliseconds however few rows it has (DuckDB plans the query each
    time) and little more for a thousand rows, so, like group commit, whoever finds no call in
    flight validates everything queued meanwhile, and the others wait for their share.
    """

    def __init__(self, pseudonymizer: Pseudonymizer, rules: EventRules | None = None, max_rows: int = 5000) -> None:
        self.pseudonymizer, self.rules, self.max_rows = pseudonymizer, rules, max_rows
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._running = False
        self.calls = 0

    def validate(self, table: pa.Table, positions: list[int]) -> ValidatedBatch:
        job = _Job(table, positions)
        with self._cond:
            self._pending.append(job)
            while not job.done:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                jobs: list[_Job] = []
                rows = 0
                while self._pending and (not jobs or rows + self._pending[0].table.num_rows <= self.max_rows):
                    rows += self._pending[0].table.num_rows
                    jobs.append(self._pending.pop(0))
                self._cond.release()
                try:
                    self._run(jobs)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _one(self, job: _Job) -> None:
        try:
            job.result = validate_events(job.table, pseudonymizer=self.pseudonymizer, rules=self.rules, positions=job.positions)
        except BaseException as error:
            job.error = error
        job.done = True

    def _run(self, jobs: list[_Job]) -> None:
        by_schema: dict[pa.Schema, list[_Job]] = {}
        for job in jobs:
            by_schema.setdefault(job.table.schema, []).append(job)
        for group in by_schema.values():
            self.calls += 1
            if len(group) == 1:
                self._one(group[0])
                continue
            starts = [0]
            for job in group:
                starts.append(starts[-1] + job.table.num_rows)
            try:
                checked = validate_events(
                    pa.concat_tables([j.table for j in group]), pseudonymizer=self.pseudonymizer, rules=self.rules, first_position=0
                )
            except Exception:  # a whole-batch refusal: find whose batch it is
                for job in group:
                    self._one(job)
                continue
            errors: list[list[RecordError]] = [[] for _ in group]
            rejected: list[list[int]] = [[] for _ in group]
            for e in checked.errors:
                k = bisect.bisect_right(starts, e.position) - 1
                local = group[k].positions[e.position - starts[k]]
                errors[k].append(RecordError(local, e.field, e.value, e.expected, e.source))
            for position in checked.rejected_positions:
                k = bisect.bisect_right(starts, position) - 1
                rejected[k].append(group[k].positions[position - starts[k]])
            offset = 0
            for k, job in enumerate(group):
                n_valid = job.table.num_rows - len(rejected[k])
                job.result = ValidatedBatch(checked.valid.slice(offset, n_valid), errors[k], rejected[k])
                job.done = True
                offset += n_valid


def check_events(
    payload: Any,
    *,
    pseudonymizer: Pseudonymizer,
    max_batch: int,
    rules: EventRules | None = None,
    coalescer: ValidationCoalescer | None = None,
) -> CheckedBatch:
    """Check a parsed JSON body; raises InputError for a batch that is wrong as a whole."""
    if not isinstance(payload, dict) or set(payload) != {"events"}:
        raise InputError('the body must be a JSON object with exactly one field, "events" (a list)')
    records = payload["events"]
    if not isinstance(records, list):
        raise InputError('"events" must be a list of event objects')
    if len(records) > max_batch:
        raise InputError(f'"events" holds {len(records)} records; at most {max_batch} per request')
    problems: list[RecordProblem] = []
    rejected: set[int] = set()
    rows: list[EventIn] = []
    positions: list[int] = []
    for index, record in enumerate(records):
        try:
            rows.append(_EVENT.validate_python(record))
            positions.append(index)
        except ValidationError as error:
            problems += _pydantic_problems(index, record, error)
            rejected.add(index)
    if not rows:
        return CheckedBatch(EVENT_SCHEMA.empty_table(), problems, len(rejected))

    raw = {name: [getattr(r, name) for r in rows] for name in _FIELDS}
    columns: dict[str, pa.Array] = {}
    for name in ("event_id", "user_id", "session_id", "item_id"):
        columns[name] = pa.array([_id(v) for v in raw[name]], pa.string())
    for name in ("type", "device", "region", "page", "referrer"):
        columns[name] = pa.array(raw[name], pa.string())
    columns["timestamp"] = _timestamps(raw["timestamp"])
    for name in ("value", "price"):
        columns[name] = pa.array([None if v is None else float(v) for v in raw[name]], pa.float64())
    if coalescer is not None:
        checked = coalescer.validate(pa.table(columns), positions)
    else:
        checked = validate_events(pa.table(columns), pseudonymizer=pseudonymizer, rules=rules, positions=positions)
    for e in checked.errors:
        problems.append(RecordProblem(index=e.position, loc=["events", e.position, e.field], field=e.field, value=e.value, expected=e.expected))
    rejected.update(checked.rejected_positions)
    problems.sort(key=lambda p: (p.index if p.index is not None else -1))
    return CheckedBatch(checked.valid, problems, len(rejected))
