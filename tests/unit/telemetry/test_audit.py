"""The audit trail: a bounded queue written in batches, denials dropped (and counted) when full,
management actions only at the hard cap; failed writes retried; the table's module has no
update or delete path."""

from __future__ import annotations

import ast
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

import modelplane.registry.audit as audit_table
from modelplane.security.auditing import AuditMiddleware, Reached, claimed_key_id, classify
from modelplane.telemetry.audit import DENIED, AuditCollector, AuditEntry, AuditTrail

WHEN = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[AuditEntry]] = []
        self.wrote = threading.Event()

    def append(self, entries: Sequence[AuditEntry]) -> None:
        self.batches.append(list(entries))
        self.wrote.set()


def _deny(trail: AuditTrail, n: int = 1) -> None:
    for i in range(n):
        trail.record(DENIED, key_id=None, key_name=None, source="10.0.0.1",
                     target=f"POST /v2/models/m{i}/infer", result="401")  # fmt: skip


def test_record_queues_and_flush_writes_in_batches() -> None:
    sink = Sink()
    trail = AuditTrail(sink, batch=10, clock=lambda: WHEN)
    _deny(trail, 25)
    assert sink.batches == []  # nothing written on the caller's path
    assert trail.pending == 25
    assert trail.flush() == 25
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert sink.batches[0][0] == AuditEntry(
        WHEN, DENIED, None, None, "10.0.0.1", "POST /v2/models/m0/infer", "401"
    )
    assert (trail.pending, trail.written) == (0, 25)


def test_a_full_queue_drops_denials_and_counts_them_but_keeps_management_actions() -> None:
    sink = Sink()
    trail = AuditTrail(sink, capacity=5)
    _deny(trail, 8)
    trail.record("key.revoke", key_id="a", key_name="admin", source="s", target="k", result="200")
    assert trail.dropped == 3
    assert trail.pending == 6
    trail.flush()
    assert [e.action for b in sink.batches for e in b][-1] == "key.revoke"
    registry = CollectorRegistry()
    registry.register(AuditCollector(trail))
    text = generate_latest(registry).decode()
    assert 'modelplane_audit_entries_dropped_total{kind="denial"} 3.0' in text
    assert 'modelplane_audit_entries_dropped_total{kind="management"} 0.0' in text
    assert "modelplane_audit_entries_written_total 6.0" in text
    assert "modelplane_audit_queue_depth 0.0" in text


def test_management_actions_are_capped_too_and_counted_by_kind() -> None:
    sink = Sink()
    trail = AuditTrail(sink, capacity=5)
    for i in range(14):
        trail.record("push", key_id="a", key_name="p", source="s", target=f"m{i}", result="201")
    _deny(trail, 2)
    assert trail.pending == 10  # the hard cap: twice the capacity, whatever the kind
    assert trail.dropped_by_kind == {"denial": 2, "management": 4}
    assert trail.dropped == 6


def test_a_failed_write_is_retried_before_the_batch_is_dropped() -> None:
    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures, self.calls, self.entries = failures, 0, 0

        def append(self, entries: Sequence[AuditEntry]) -> None:
            self.calls += 1
            if self.calls <= self.failures:
                raise OSError("database is locked")
            self.entries += len(entries)

    flaky = Flaky(failures=2)
    trail = AuditTrail(flaky, retry_s=0)
    _deny(trail, 3)
    assert trail.flush() == 3
    assert (flaky.calls, flaky.entries, trail.dropped) == (3, 3, 0)
    broken = Flaky(failures=100)
    trail = AuditTrail(broken, retry_s=0)
    _deny(trail, 2)
    trail.record("push", key_id="a", key_name="p", source="s", target="m", result="201")
    assert trail.flush() == 0
    assert broken.calls == 3
    assert trail.dropped_by_kind == {"denial": 2, "management": 1}


def test_the_background_writer_flushes_and_stop_writes_what_is_left() -> None:
    sink = Sink()
    trail = AuditTrail(sink, flush_s=0.05)
    trail.start()
    try:
        _deny(trail)
        assert sink.wrote.wait(5)
    finally:
        trail.stop()
    _deny(trail, 3)  # after stop: written by the next stop or flush, never lost silently
    trail.stop()
    assert sum(len(b) for b in sink.batches) == 4


def test_recording_is_safe_from_many_threads() -> None:
    sink = Sink()
    trail = AuditTrail(sink, batch=7, flush_s=0.01)
    trail.start()
    threads = [threading.Thread(target=_deny, args=(trail, 200)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trail.stop()
    assert (sum(len(b) for b in sink.batches), trail.dropped) == (1600, 0)


def test_a_failing_sink_does_not_raise_into_the_caller() -> None:
    class Broken:
        def append(self, entries: Sequence[AuditEntry]) -> None:
            raise OSError("disk full")

    trail = AuditTrail(Broken(), retry_s=0)
    _deny(trail)
    assert trail.flush() == 0


def test_the_table_module_has_no_update_or_delete_path() -> None:
    source = Path(audit_table.__file__).read_text()
    tree = ast.parse(source)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    for forbidden in ("update", "delete", "merge", "execute_update", "truncate"):
        assert forbidden not in names | imported, forbidden
    for word in ("UPDATE ", "DELETE ", "DROP "):
        assert word not in source.upper().replace("NO UPDATE OR DELETE PATH", "")
    public = {n for n in dir(audit_table.AuditLog) if not n.startswith("_")}
    assert public == {"append", "query"}


def test_classify_maps_management_routes_to_actions() -> None:
    cases = {
        ("POST", "/api/v1/models/iris/versions"): ("push", "iris"),
        ("PUT", "/api/v1/models/iris/aliases/prod"): ("alias", "iris:prod"),
        ("DELETE", "/api/v1/models/iris/versions/3"): ("delete", "iris:3"),
        ("DELETE", "/api/v1/models/iris"): ("delete", "iris"),
        ("POST", "/api/v1/deployments"): ("deploy", ""),
        ("DELETE", "/api/v1/deployments/iris"): ("undeploy", "iris"),
        ("POST", "/api/v1/keys/abc/rotate"): ("key.rotate", "abc"),
        ("POST", "/api/v1/admin/rotate-master-key"): ("master_key.rotate", ""),
        ("POST", "/api/v1/brand-new"): ("post /api/v1/brand-new", "/api/v1/brand-new"),
    }
    for (method, path), (action, target) in cases.items():
        found = classify(method, path)
        assert found is not None, path
        assert (found.action, found.target) == (action, target), path
    assert classify("GET", "/api/v1/models") is None
    assert classify("POST", "/v2/models/iris/infer") is None


def test_only_the_id_of_a_key_is_taken() -> None:
    assert claimed_key_id("Bearer mpk_0a1b2c_s3cr3t") == "0a1b2c"
    assert claimed_key_id("Bearer something-else") is None


async def _answer(app: Any, method: str, path: str) -> None:
    scope = {"type": "http", "method": method, "path": path, "headers": [], "state": {},
             "client": ("10.0.0.9", 1)}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    await app(scope, receive, send)


def _status_app(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_a_change_refused_before_its_route_is_a_denial_not_the_change() -> None:
    sink = Sink()
    trail = AuditTrail(sink)
    for status in (400, 429):  # a gate (block, quota, web check) answered: no route reached
        await _answer(AuditMiddleware(_status_app(status), trail), "POST", "/api/v1/deployments")
    await _answer(AuditMiddleware(Reached(_status_app(400)), trail), "POST", "/api/v1/deployments")
    trail.flush()
    entries = [(e.action, e.result, e.detail) for b in sink.batches for e in b]
    assert entries == [("denied", "400", "deploy"), ("denied", "429", "deploy"),
                       ("deploy", "400", "")]  # fmt: skip
