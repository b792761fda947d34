"""/api/v1/deployments: desired state in, observed state out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from modelplane.api.deps import allow, see_deployment, see_model
from modelplane.api.schemas import CordonIn, DeployIn, DeploymentOut, NodeOut
from modelplane.api.services import Services
from modelplane.domain import ModelRef, Node, Principal, Replica
from modelplane.domain.traffic import Window
from modelplane.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelplane.registry.deployments import DeploymentRecord
from modelplane.registry.nodes import Cordon
from modelplane.scheduler.controller import under_maintenance
from modelplane.security.auditing import note
from modelplane.security.policy import Action, in_scope, sees_deployment


def create_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
    store = services.deployments
    controller = services.controller

    watch = services.gateway.watch

    def out(record: DeploymentRecord) -> DeploymentOut:
        name, view = record.deployment.name, controller.view
        since = record.split.since if record.split is not None else 0.0  # a rollout: its step
        two = record.candidate is not None
        return DeploymentOut.of(
            record,
            view.replicas_of(name),
            last_failure=view.failures.get(name),
            target=view.scale.get(name),
            placement=lambda replica_id: view.placements.get(replica_id, ""),
            pending=list(view.pending.get(name, [])),
            events=view.events_of(name),
            reconciled=view.acted_on.get(name) == record.deployment.updated_at,
            rollout_status=view.rollouts.get(name, ""),
            measured=lambda version: watch.window(name, str(version), since) if two else Window(),
            agreed=watch.agreement(name, since) if two else None,
        )

    def _may_replace(who: Principal, name: str) -> bool:
        """Whether the deployment of this name, if there is one, serves a model in scope."""
        try:
            record = store.get(name)
        except NotFound:
            return True
        return sees_deployment(who, name, record.version.model)

    @router.post("", response_model=DeploymentOut)
    def deploy(
        body: DeployIn, request: Request, who: Annotated[Principal, Depends(allow(Action.DEPLOY))]
    ) -> DeploymentOut:
        """Create or update a deployment; replicas start in the background (poll status)."""
        try:
            ref = ModelRef.parse(body.model)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        see_model(who, ref.name)
        name = body.name or ref.name
        note(request, target=name, detail=f"model {body.model}")
        if not in_scope(who, name):
            raise PermissionDenied(f"this key may not deploy under the name {name!r}")
        if not _may_replace(who, name):  # taken by a deployment this key cannot see
            raise Conflict(f"the name {name!r} cannot be used; deploy under another name (--name)")
        replicas = body.replicas
        if replicas is None and body.autoscaling_off:
            # fixed from now on at the count autoscaling had reached (at least 1)
            target = controller.view.scale.get(body.name or ref.name)
            replicas = max(1, target) if target is not None else None
        split = body.split()
        if split is not None:
            note(request, detail=f"model {body.model} beside the current version: {split.mode} "
                 f"{split.percent:g}%")  # fmt: skip
        record = store.apply(
            ref, replicas, body.name, body.config_change(), body.scheduling(), split
        )
        controller.kick()
        return out(record)

    def switch(
        name: str,
        request: Request,
        who: Principal,
        move: Callable[[str, str], DeploymentRecord],
        done: str,
    ) -> DeploymentOut:
        see_deployment(who, store.get(name))
        record = move(name, f"{done} by {who.name}")
        note(request, detail=f"now serves {record.deployment.ref}")
        controller.kick()
        return out(record)

    @router.post("/{name}/promote", response_model=DeploymentOut)
    def promote(
        name: str, request: Request, who: Annotated[Principal, Depends(allow(Action.DEPLOY))]
    ) -> DeploymentOut:
        """The canary, shadow or rollout's version serves every request from now on (at once:
        its replicas are ready; the old ones drain)."""
        return switch(name, request, who, store.promote, "promoted")

    @router.post("/{name}/rollback", response_model=DeploymentOut)
    def rollback(
        name: str, request: Request, who: Annotated[Principal, Depends(allow(Action.DEPLOY))]
    ) -> DeploymentOut:
        """Every request back to the current version, the candidate stopped; with no
        candidate, back to the version served before the last promotion or deploy."""
        return switch(name, request, who, store.rollback, "rolled back")

    @router.get("", response_model=list[DeploymentOut])
    def list_deployments(
        who: Annotated[Principal, Depends(allow(Action.READ))],
    ) -> list[DeploymentOut]:
        return [
            out(r) for r in store.list() if sees_deployment(who, r.deployment.name, r.version.model)
        ]

    @router.get("/{name}", response_model=DeploymentOut)
    def show(name: str, who: Annotated[Principal, Depends(allow(Action.READ))]) -> DeploymentOut:
        return out(see_deployment(who, store.get(name)))

    @router.delete("/{name}", status_code=204)
    def delete(name: str, who: Annotated[Principal, Depends(allow(Action.DEPLOY))]) -> Response:
        see_deployment(who, store.get(name))
        store.delete(name)
        controller.kick()
        return Response(status_code=204)

    return router


def create_nodes_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])
    controller = services.controller

    def find(node_id: str) -> Node:
        nodes = controller.view.nodes
        for node in nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in nodes) or "none yet"
        raise NotFound(f"no node {node_id!r}; nodes: {known}")

    def out(node: Node, on_node: list[Replica], cordon: Cordon | None) -> NodeOut:
        return NodeOut.of(under_maintenance(node, cordon), on_node, cordon.reason if cordon else "")

    @router.get("", response_model=list[NodeOut])
    def list_nodes(_: Annotated[Principal, Depends(allow(Action.READ))]) -> list[NodeOut]:
        """Nodes with capacity, what is allocated, replicas, cost and state."""
        view = controller.view
        by_node = view.by_node()
        return [out(n, by_node[n.id], view.cordons.get(n.id)) for n in view.nodes]

    @router.post("/{node}/cordon", response_model=NodeOut)
    def cordon(
        node: str,
        body: CordonIn,
        request: Request,
        who: Annotated[Principal, Depends(allow(Action.NODES))],
    ) -> NodeOut:
        """Take a node out of placement; with ``drain``, move its replicas elsewhere (new ones
        start first, the old ones drain when they are ready)."""
        note(request, action="node.drain" if body.drain else "node.cordon")
        found = find(node)  # 404 for a node that does not exist
        reason = body.reason or ("drained" if body.drain else "cordoned") + f" by {who.name}"
        cordon = services.nodes.cordon(node, drain=body.drain, reason=reason, by=who.name)
        controller.kick()  # the next reconcile (now) acts on it
        return out(found, controller.view.by_node()[node], cordon)

    @router.delete("/{node}/cordon", status_code=204)
    def uncordon(node: str, _: Annotated[Principal, Depends(allow(Action.NODES))]) -> Response:
        """Let the node take replicas again."""
        services.nodes.uncordon(node)
        controller.kick()
        return Response(status_code=204)

    return router
