"""A replica process: verify the artifact, load it, serve V2 on a Unix socket or TCP port.

Started by an executor (``python -m modelplane.serving.replica ...``); exits by itself when the
process that started it goes away, so a killed server never leaves replicas behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import uvicorn

from modelplane.artifacts import sha256_file
from modelplane.protocol.v2 import Limits
from modelplane.runtime.onnx import OnnxRuntime
from modelplane.serving.dataplane import DataPlane
from modelplane.serving.replica_app import create_replica_app
from modelplane.settings import ReplicaSettings

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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-request-bytes", type=int, default=64 << 20)
    parser.add_argument("--max-elements", type=int, default=1 << 28)
    return parser


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            log.warning("parent process %s is gone; replica exits", parent)
            os._exit(0)
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    actual = sha256_file(args.artifact)
    if actual != args.digest:
        log.error("artifact digest mismatch: expected %s, found %s", args.digest, actual)
        return 3
    runtime = OnnxRuntime(args.artifact, args.threads)
    plane = DataPlane(args.name, args.version, runtime, Limits(args.max_elements))
    started = time.perf_counter()
    plane.load()
    log.info("loaded %s:%s in %.2fs", args.name, args.version, time.perf_counter() - started)
    app = create_replica_app(plane, ReplicaSettings().token, args.max_request_bytes)
    if args.uds is not None:
        config = uvicorn.Config(app, uds=str(args.uds), log_level="warning", access_log=False)
    else:
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", access_log=False
        )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
