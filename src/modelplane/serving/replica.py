"""A replica process: verify the artifact, load it, answer frames on a Unix socket or TCP port.

Started by an executor (``python -m modelplane.serving.replica ...``); exits by itself when the
process that started it goes away, so a killed server never leaves replicas behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from modelplane.artifacts import ArtifactBroken, read_artifact
from modelplane.bundles import is_bundle, unpack
from modelplane.protocol.v2 import Limits
from modelplane.runtime.batching import BatchingConfig, BatchingRuntime
from modelplane.runtime.media import MediaRuntime
from modelplane.runtime.onnx import OnnxRuntime
from modelplane.runtime.text import TokenizingRuntime
from modelplane.security.inputguard import ACTIONS, guard_from
from modelplane.security.replica_tls import replica_server_context
from modelplane.serving.dataplane import DataPlane, PayloadLog
from modelplane.serving.heap import freeze_startup_objects, release_freed_memory
from modelplane.serving.replica_env import ReplicaEnv, ReplicaEnvError
from modelplane.serving.replica_server import Drain, Plane, ReplicaProtocol
from modelplane.telemetry.drift import DriftMonitor
from modelplane.telemetry.logs import Flusher, LogWriter, RequestLog, json_logging
from modelplane.watchdog import watch_parent

log = logging.getLogger("modelplane.replica")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelplane-replica")
    parser.add_argument("--name", required=True, help="public model name")
    parser.add_argument("--version", required=True)
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--digest", required=True)
    parser.add_argument("--uds", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the bound TCP port here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-elements", type=int, default=1 << 28)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--preferred-batch-size", type=int, action="append", default=[])
    parser.add_argument("--log-file", type=Path, help="JSON log file (rotated)")
    parser.add_argument("--replica-id", default="")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--no-request-log", action="store_true")
    parser.add_argument("--payload-log-rate", type=float, default=0.0)
    parser.add_argument("--input-guard", choices=ACTIONS, default="off")
    parser.add_argument("--input-guard-sigmas", type=float, default=6.0)
    parser.add_argument("--input-stats", type=json.loads, default=None, help="JSON")
    return parser


async def _serve(
    args: argparse.Namespace, plane: Plane, token: bytes, tls: ssl.SSLContext | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)
    drain = Drain()
    if args.uds is not None:
        server = await loop.create_unix_server(
            lambda: ReplicaProtocol(plane, token, drain), args.uds
        )
        os.chmod(args.uds, 0o600)
    else:
        server = await loop.create_server(
            lambda: ReplicaProtocol(plane, token, drain), args.host, args.port, ssl=tls
        )
        if args.port_file is not None:
            port = server.sockets[0].getsockname()[1]
            staging = args.port_file.with_suffix(".tmp")
            staging.write_text(str(port))
            staging.replace(args.port_file)  # readers never see a half-written file
    log.info("serving %s:%s", plane.name, plane.version)
    async with server:
        await stop
        # unready at once (health probes see it), new requests bounced to other replicas,
        # those in flight answered, within the drain timeout
        plane.ready, drain.draining = False, True
        log.info("draining: %d request(s) in flight", drain.busy)
        if not await drain.finished(args.drain_timeout_s):
            log.warning("drain timed out with %d request(s) unanswered", drain.busy)


class _Logs(NamedTuple):
    requests: RequestLog | None
    payloads: PayloadLog | None
    flush: Callable[[], None]  # stops the background flushing and writes out what is buffered


def _logging(args: argparse.Namespace, stack: contextlib.ExitStack) -> _Logs:
    """JSON logs to the replica's rotated log file (and sampled payloads next to it), flushed in
    the background until ``stack`` closes."""
    if args.log_file is None:
        return _Logs(None, None, lambda: None)
    writer = stack.enter_context(LogWriter(args.log_file))
    stack.enter_context(json_logging(writer, "replica", args.name, args.replica_id))
    writers, payloads = [writer], None
    if args.payload_log_rate > 0:
        path = args.log_file.with_name(args.log_file.stem + ".payloads.jsonl")
        payload_writer = stack.enter_context(LogWriter(path))
        writers.append(payload_writer)
        payloads = PayloadLog(payload_writer, args.payload_log_rate)
    flusher = stack.enter_context(Flusher(*writers))
    requests = (
        None if args.no_request_log else RequestLog(writer, "replica", args.name, args.replica_id)
    )
    return _Logs(requests, payloads, flusher.stop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = ReplicaEnv.read()
    except ReplicaEnvError as exc:
        log.error("%s", exc)
        return 2
    with contextlib.ExitStack() as stack:  # the logs are flushed and closed however main ends
        logs = _logging(args, stack)
        # the pid the starter gave, not getppid(): a starter gone already must be seen as gone
        watch_parent(settings.parent_pid or os.getppid(), logs.flush)
        return _run(args, logs, settings)


def _run(args: argparse.Namespace, logs: _Logs, settings: ReplicaEnv) -> int:
    data_key = settings.artifact_key
    try:
        # decrypted in memory only, and verified against its digest before it is loaded
        model = read_artifact(args.artifact, args.digest, bytes.fromhex(data_key) or None)
    except (ArtifactBroken, ValueError) as exc:
        log.error("artifact sha256:%s failed verification: %s", args.digest[:12], exc)
        return 3
    if is_bundle(model[:512]):
        plane: Plane = _language_model(args, model, logs)
    else:
        plane = _tensor_model(args, model, logs)
    del model  # the runtime lets go of the bytes once loaded
    token = settings.token.encode()
    tls = None  # TCP to other machines (Ray) is TLS with the certificate the executor issued
    if settings.tls_cert and args.uds is None:
        tls = replica_server_context(settings.tls_cert, settings.tls_key)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    release_freed_memory()  # the model's bytes and what loading it freed
    freeze_startup_objects()  # the model and the modules: no collection walks them again
    asyncio.run(_serve(args, plane, token, tls))
    return 0


def _language_model(args: argparse.Namespace, model: bytes, logs: _Logs) -> Plane:
    """A bundle: unpacked into a private folder only while the engine loads it."""
    from modelplane.runtime.generation import GenerationRuntime
    from modelplane.serving.generation import GenerationPlane

    folder = Path(tempfile.mkdtemp(prefix="modelplane-llm-"))  # 0700
    try:
        unpack(model, folder)
        runtime = GenerationRuntime(folder, max_batch=args.max_batch_size, threads=args.threads)
        plane = GenerationPlane(args.name, args.version, runtime, logs.requests)
        started = time.perf_counter()
        plane.load()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log.info("loaded %s:%s in %.2fs (continuous batching up to %d streams)", args.name,
             args.version, time.perf_counter() - started, runtime.max_batch)  # fmt: skip
    return plane


def _tensor_model(args: argparse.Namespace, model: bytes, logs: _Logs) -> Plane:
    config = BatchingConfig(
        max_batch_size=args.max_batch_size,
        max_queue_delay_s=args.max_queue_delay_ms / 1000,
        preferred_batch_sizes=tuple(args.preferred_batch_size),
    )
    # images or audio in (when the version declares processing), text in (a tokenizer), ONNX
    inner = MediaRuntime(TokenizingRuntime(OnnxRuntime(model, args.threads)))
    runtime = BatchingRuntime(inner, config)
    guard = guard_from(args.input_stats, args.input_guard, args.input_guard_sigmas)
    plane = DataPlane(
        args.name, args.version, runtime, Limits(args.max_elements), logs.requests, logs.payloads,
        None if guard is None else (guard, args.input_guard), DriftMonitor(),
    )  # fmt: skip
    started = time.perf_counter()
    plane.load()
    log.info(
        "loaded %s:%s in %.2fs (batching %s)",
        args.name,
        args.version,
        time.perf_counter() - started,
        "on" if runtime.enabled else "off",
    )
    return plane


if __name__ == "__main__":
    sys.exit(main())
