"""/api/v1/deployments: desired state in, observed state out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from modelplane.api.deps import allow
from modelplane.api.schemas import DeployIn, DeploymentOut, NodeOut, ReplicaOut
from modelplane.api.services import Services
from modelplane.domain import ModelRef, Principal
from modelplane.errors import InvalidInput
from modelplane.registry.deployments import DeploymentRecord
from modelplane.security.policy import Action


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
    store = services.deployments
    controller = services.controller

    def out(record: DeploymentRecord) -> DeploymentOut:
        name = record.deployment.name
        replicas = controller.replicas(name)
        out = DeploymentOut.of(
            record, replicas, controller.last_failure(name), controller.scale_target(name)
        )
        out.replicas = [ReplicaOut.of(r, controller.placement(r.id)) for r in replicas]
        out.pending = controller.pending(name)
        out.events = controller.events(name)
        return out

    @router.post("", response_model=DeploymentOut)
    def deploy(
        body: DeployIn, _: Annotated[Principal, Depends(allow(Action.DEPLOY))]
    ) -> DeploymentOut:
        """Create or update a deployment; replicas start in the background (poll status)."""
        try:
            ref = ModelRef.parse(body.model)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        config = body.config.to_domain() if body.config is not None else None
        record = store.apply(ref, body.replicas, body.name, config, body.scheduling())
        controller.kick()
        return out(record)

    @router.get("", response_model=list[DeploymentOut])
    def list_deployments(
        _: Annotated[Principal, Depends(allow(Action.READ))],
    ) -> list[DeploymentOut]:
        return [out(r) for r in store.list()]

    @router.get("/{name}", response_model=DeploymentOut)
    def show(name: str, _: Annotated[Principal, Depends(allow(Action.READ))]) -> DeploymentOut:
        return out(store.get(name))

    @router.delete("/{name}", status_code=204)
    def delete(name: str, _: Annotated[Principal, Depends(allow(Action.DEPLOY))]) -> Response:
        store.delete(name)
        controller.kick()
        return Response(status_code=204)

    return router


def create_nodes_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])
    controller = services.controller

    @router.get("", response_model=list[NodeOut])
    def list_nodes(_: Annotated[Principal, Depends(allow(Action.READ))]) -> list[NodeOut]:
        """Nodes with capacity, what is allocated, replicas, cost and state."""
        replicas = controller.all_replicas()
        return [NodeOut.of(n, replicas) for n in controller.nodes()]

    return router
