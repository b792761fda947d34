"""/metrics: Prometheus text format, for keys allowed to read metrics."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelplane.api.deps import allow
from modelplane.api.services import Services
from modelplane.domain import Principal, Role
from modelplane.domain.auth import ALL_MODELS
from modelplane.security.policy import Action, sees_deployment
from modelplane.serving.gateway import Gateway
from modelplane.telemetry.metrics import ReplicaSample, Snapshot

MODEL_LABEL = re.compile(rb'[{,]model="([^"]*)"')
KEY_LABEL = re.compile(rb'[{,]key_id="')


def _scoped(text: bytes, who: Principal, serves: Mapping[str, str]) -> bytes:
    """Without the series a key may not see: a ``model`` label is a deployment's name, shown
    when that name and the model it serves (``serves``: name -> model) are both in scope, as on
    the V2 routes (a name no longer known is hidden from scoped keys); ``key_id`` series only
    for an admin key without a scope."""
    unscoped = who.models == ALL_MODELS
    keys_too = unscoped and who.role is Role.ADMIN
    if keys_too:
        return text
    kept = []
    for line in text.split(b"\n"):
        if KEY_LABEL.search(line):
            continue
        found = MODEL_LABEL.search(line)
        if found is not None and not unscoped:
            name = found.group(1).decode()
            model = serves.get(name)
            if model is None or not sees_deployment(who, name, model):
                continue
        kept.append(line)
    return b"\n".join(kept)


def _served_models(gateway: Gateway) -> dict[str, str]:
    """Deployment name -> the model it serves (or last served, for a retired name)."""
    table = gateway.table
    serves = {name: spec.partition(":")[0] for name, spec in table.retired.items()}
    serves.update({name: route.model for name, route in table.routes.items()})
    return serves


def create_router(services: Services) -> APIRouter:
    router = APIRouter(tags=["monitoring"])
    gateway, controller, metrics = services.gateway, services.controller, services.metrics

    @router.get("/metrics", response_class=Response)
    async def prometheus(who: Annotated[Principal, Depends(allow(Action.METRICS))]) -> Response:
        view = controller.view
        replicas = {r.id: r for r in view.replicas}
        samples = []
        for routed in list(gateway.table.routes.values()):
            # each version a deployment serves: a canary's or shadow's replicas too
            for route in filter(None, (routed.pinned(v) for v in routed.versions())):
                for endpoint, stats in await gateway.replica_stats(route):
                    replica = replicas.get(endpoint.replica_id)
                    bytes_in, bytes_out = gateway.traffic[endpoint.replica_id]
                    samples.append(ReplicaSample(
                        route.name, route.version, endpoint.replica_id, stats, bytes_in,
                        bytes_out, node=replica.node if replica else "",
                        remote=replica is not None and replica.pid is None,
                    ))  # fmt: skip
        states = Counter(r.state.value for r in replicas.values())
        states["pending"] = view.pending_count()
        metrics.snapshot = Snapshot(samples, dict(states), gateway.in_flight())
        text = generate_latest(metrics.registry)
        scoped = _scoped(text, who, _served_models(gateway))
        return Response(scoped, media_type=CONTENT_TYPE_LATEST)

    return router
