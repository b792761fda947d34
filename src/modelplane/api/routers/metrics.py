"""/metrics: Prometheus text format, for keys allowed to read metrics."""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelplane.api.deps import allow
from modelplane.api.services import Services
from modelplane.domain import Principal
from modelplane.domain.auth import ALL_MODELS
from modelplane.security.policy import Action, in_scope
from modelplane.telemetry.metrics import ReplicaSample, Snapshot

MODEL_LABEL = re.compile(rb'[{,]model="([^"]*)"')


def _scoped(text: bytes, who: Principal) -> bytes:
    """Without the series of models outside the key's scope."""
    if who.models == ALL_MODELS:
        return text
    kept = []
    for line in text.split(b"\n"):
        found = MODEL_LABEL.search(line)
        if found is None or in_scope(who, found.group(1).decode()):
            kept.append(line)
    return b"\n".join(kept)


def create_router(services: Services) -> APIRouter:
    router = APIRouter(tags=["monitoring"])
    gateway, controller, metrics = services.gateway, services.controller, services.metrics

    @router.get("/metrics", response_class=Response)
    async def prometheus(who: Annotated[Principal, Depends(allow(Action.METRICS))]) -> Response:
        replicas = {r.id: r for r in controller.all_replicas()}
        samples = []
        for route in list(gateway.table.routes.values()):
            for endpoint, stats in await gateway.replica_stats(route):
                replica = replicas.get(endpoint.replica_id)
                bytes_in, bytes_out = gateway.traffic[endpoint.replica_id]
                samples.append(ReplicaSample(
                    route.name, route.version, endpoint.replica_id, stats, bytes_in, bytes_out,
                    node=replica.node if replica else "",
                    remote=replica is not None and replica.pid is None,
                ))  # fmt: skip
        states = Counter(r.state.value for r in replicas.values())
        states["pending"] = controller.pending_count()
        metrics.snapshot = Snapshot(samples, dict(states), gateway.in_flight())
        text = generate_latest(metrics.registry)
        return Response(_scoped(text, who), media_type=CONTENT_TYPE_LATEST)

    return router
