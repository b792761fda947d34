"""Replica placement: a pure function of an explicit cluster view. No I/O, no clock reads.

For each replica: filter the nodes (healthy, enough free CPU, memory and GPUs, labels and GPU
type match), then score what is left, lowest first:

- cost: the node's price for the share of it the replica takes (cost per hour times the larger
  of the CPU and memory share), relative to the cheapest candidate;
- pack: opening an empty node costs extra, and a tighter fit on a used node is preferred, so
  whole nodes stay free (and can be switched off);
- spread: each replica of the same deployment already on the node, and each one more in the
  node's zone than in the emptiest zone, counts against it, so losing one node or zone never
  takes a deployment with 2+ replicas down.

The weights come from the deployment's ``PlacementPolicy``. Nodes are held in numpy arrays so a
placement over 10,000 nodes is a handful of vector operations.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from modelplane.domain import Node, NodeState, PlacementPolicy, Resources

NODE_SPREAD = 8.0  # score for the share of the deployment already on a node
ZONE_SPREAD = 4.0  # score for the share more in a zone than in the emptiest candidate zone
OPEN_NODE = 1.0  # score for starting to use an empty node
OPEN_COST = 2.0  # how much more a price difference counts when the node is empty
FIT = 0.25  # score for the share of the node left free after placing (best fit)
BALANCE = 1.0  # score for leaving CPU and memory unevenly used (strands the other)
GPU_RESERVE = 8.0  # score for opening a GPU node for a replica that needs no GPU


@dataclass(frozen=True, slots=True)
class Request:
    """One replica of ``deployment`` to place."""

    deployment: str
    resources: Resources
    policy: PlacementPolicy = field(default_factory=PlacementPolicy)


@dataclass(frozen=True, slots=True)
class Placed:
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unplaced:
    reason: str


Decision = Placed | Unplaced


class ClusterView:
    """Nodes, what is allocated on each, and where each deployment's replicas are."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self.index = {n.id: i for i, n in enumerate(self.nodes)}
        n = len(self.nodes)
        self.cap_cpu = np.array([x.capacity.cpu for x in self.nodes], dtype=np.float64)
        self.cap_mem = np.array([x.capacity.memory_mb for x in self.nodes], dtype=np.float64)
        self.cap_gpu = np.array([x.capacity.gpus for x in self.nodes], dtype=np.float64)
        self.free_cpu = self.cap_cpu.copy()
        self.free_mem = self.cap_mem.copy()
        self.free_gpu = self.cap_gpu.copy()
        self.cost = np.array([x.cost_per_hour for x in self.nodes], dtype=np.float64)
        with np.errstate(divide="ignore"):
            self.inv_cpu = np.where(self.cap_cpu > 0, 1 / self.cap_cpu, 0.0)
            self.inv_mem = np.where(self.cap_mem > 0, 1 / self.cap_mem, 0.0)
            self.inv_gpu = np.where(self.cap_gpu > 0, 1 / self.cap_gpu, 0.0)
        self.gpu_node = self.cap_gpu > 0
        # what work without GPUs may use: a GPU node keeps half of each free GPU's share
        self.spare_cpu = np.where(self.gpu_node, self.cap_cpu / 2, self.cap_cpu)
        self.spare_mem = np.where(self.gpu_node, self.cap_mem / 2, self.cap_mem)
        self.replicas = np.zeros(n, dtype=np.int64)
        self.usable = np.array([x.state == NodeState.HEALTHY for x in self.nodes], dtype=bool)
        zones = sorted({x.zone for x in self.nodes})
        self.zone_names = zones
        zone_of = {z: i for i, z in enumerate(zones)}
        self.zone = np.array([zone_of[x.zone] for x in self.nodes], dtype=np.int64)
        self.on_node: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.in_zone: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._label_masks: dict[tuple[tuple[str, ...], ...], npt.NDArray[np.bool_]] = {}

    @classmethod
    def build(
        cls, nodes: Sequence[Node], allocations: Iterable[tuple[str, str, Resources]]
    ) -> ClusterView:
        """A view of ``nodes`` with ``(node id, deployment, resources)`` already running."""
        view = cls(nodes)
        for node, deployment, resources in allocations:
            if node in view.index:
                view.assign(node, deployment, resources)
        return view

    def copy(self) -> ClusterView:
        other = ClusterView.__new__(ClusterView)
        other.nodes, other.index, other.zone_names = self.nodes, self.index, self.zone_names
        for name in ("cap_cpu", "cap_mem", "cap_gpu", "cost", "zone", "inv_cpu", "inv_mem",
                     "inv_gpu", "gpu_node"):  # fmt: skip
            setattr(other, name, getattr(self, name))
        for name in ("free_cpu", "free_mem", "free_gpu", "replicas", "usable", "spare_cpu",
                     "spare_mem"):  # fmt: skip
            setattr(other, name, getattr(self, name).copy())
        other.on_node = defaultdict(Counter, {k: Counter(v) for k, v in self.on_node.items()})
        other.in_zone = defaultdict(Counter, {k: Counter(v) for k, v in self.in_zone.items()})
        other._label_masks = self._label_masks
        return other

    # ---- changes (the caller's working copy) ------------------------------------------------
    def assign(self, node: str, deployment: str, resources: Resources) -> None:
        i = self.index[node]
        self.free_cpu[i] -= resources.cpu
        self.free_mem[i] -= resources.memory_mb
        self.free_gpu[i] -= resources.gpus
        self.replicas[i] += 1
        self.on_node[deployment][i] += 1
        self.in_zone[deployment][int(self.zone[i])] += 1
        self._spare(i)

    def release(self, node: str, deployment: str, resources: Resources) -> None:
        i = self.index[node]
        self.free_cpu[i] += resources.cpu
        self.free_mem[i] += resources.memory_mb
        self.free_gpu[i] += resources.gpus
        self.replicas[i] -= 1
        self.on_node[deployment][i] -= 1
        self.in_zone[deployment][int(self.zone[i])] -= 1
        self._spare(i)

    def _spare(self, i: int) -> None:
        held = self.free_gpu[i] * self.inv_gpu[i] / 2  # share kept for the free GPUs
        self.spare_cpu[i] = self.free_cpu[i] - held * self.cap_cpu[i]
        self.spare_mem[i] = self.free_mem[i] - held * self.cap_mem[i]

    # ---- reads ------------------------------------------------------------------------------
    def _labels(self, policy: PlacementPolicy, gpus: bool) -> npt.NDArray[np.bool_]:
        """Nodes with the policy's labels, in its zones, with its GPU type (cached)."""
        wanted, zones = policy.node_labels, set(policy.zones)
        gpu_type = policy.gpu_type if gpus else ""
        key = (*sorted(wanted.items()), ("\0zones", *sorted(zones)), ("\0gpu", gpu_type))
        mask = self._label_masks.get(key)
        if mask is None:
            mask = np.array(
                [
                    all(n.labels.get(k) == v for k, v in wanted.items())
                    and (not zones or n.zone in zones)
                    and (not gpu_type or n.gpu_type == gpu_type)
                    for n in self.nodes
                ],
                dtype=bool,
            )
            self._label_masks[key] = mask
        return mask


def place(view: ClusterView, request: Request) -> Decision:
    """Where one replica should go, and why; ``view`` is not changed.

    Every term is computed over all nodes at once and the ones that do not fit are masked
    out: on 10,000 nodes that is faster than gathering the candidates first."""
    want, policy = request.resources, request.policy
    eligible = view.usable & view._labels(policy, bool(want.gpus))
    if want.gpus:
        fits = (
            eligible
            & (view.free_cpu >= want.cpu - 1e-9)
            & (view.free_mem >= want.memory_mb)
            & (view.free_gpu >= want.gpus)
        )
    else:
        # work without GPUs may use a GPU node's spare CPU and memory, but leaves each free
        # GPU half of its per-GPU share, so GPU replicas still find room there
        fits = eligible & (view.spare_cpu >= want.cpu - 1e-9) & (view.spare_mem >= want.memory_mb)
    count = int(np.count_nonzero(fits))
    if count == 0:
        return Unplaced(_why_not(view, request, eligible))
    mine = view.on_node.get(request.deployment)
    if policy.spread_weight and mine and count > 1:
        hosts = [i for i, n in mine.items() if n > 0]
        if len(hosts) == 1 and fits[hosts[0]]:
            # never let one node hold every replica of a deployment when another node fits
            fits = fits.copy()
            fits[hosts[0]] = False
            count -= 1
    share = np.maximum(want.cpu * view.inv_cpu, want.memory_mb * view.inv_mem)
    if want.gpus:
        share = np.maximum(share, want.gpus * view.inv_gpu)
    price = view.cost * share
    cheapest = float(np.min(price, where=fits, initial=np.inf))
    empty = view.replicas == 0
    # a dearer node costs more when it would be switched on for this replica: its whole
    # price is then paid for as long as anything runs there
    score = (
        (policy.cost_weight / max(cheapest, 1e-9)) * (price - cheapest) * (1 + OPEN_COST * empty)
    )
    if policy.pack_weight:
        left_cpu = (view.free_cpu - want.cpu) * view.inv_cpu
        left_mem = (view.free_mem - want.memory_mb) * view.inv_mem
        score += policy.pack_weight * (
            OPEN_NODE * empty
            + FIT * np.minimum(left_cpu, left_mem)
            + BALANCE * np.abs(left_cpu - left_mem)
        )
    if not want.gpus:  # never open a GPU node for work that needs none
        score += GPU_RESERVE * (view.gpu_node & empty)
    if policy.spread_weight and mine:
        # the share of the deployment each node (and zone) would hold: a second replica beside
        # the first costs a lot, a twentieth beside one other little
        weight = policy.spread_weight / (sum(mine.values()) + 1)
        keys = np.fromiter(mine.keys(), dtype=np.int64, count=len(mine))
        score[keys] += weight * NODE_SPREAD * np.fromiter(mine.values(), np.float64, len(mine))
        zones = view.in_zone.get(request.deployment)
        if policy.spread_zones and zones:
            per_zone = np.zeros(len(view.zone_names))
            for z, n in zones.items():
                per_zone[z] = n
            score += weight * ZONE_SPREAD * per_zone[view.zone]
    chosen = int(np.argmin(np.where(fits, score, np.inf)))
    return Placed(
        view.nodes[chosen].id,
        _why(view, request, chosen, float(price[chosen]), cheapest, count),
    )


def batch_order(requests: Sequence[Request]) -> list[int]:
    """The order to place a batch in: GPU replicas, then the largest (CPU plus memory at 4 GB
    a core) first, so small replicas fill the gaps big ones leave (first fit decreasing)."""
    return sorted(
        range(len(requests)),
        key=lambda i: (
            -requests[i].resources.gpus,
            -(requests[i].resources.cpu + requests[i].resources.memory_mb / 4096),
        ),
    )


def place_all(view: ClusterView, requests: Sequence[Request]) -> list[Decision]:
    """Place a batch (largest first), each seeing the ones before it; decisions come back in
    the order of ``requests``; ``view`` is not changed."""
    return place_into(view.copy(), requests)


def place_into(work: ClusterView, requests: Sequence[Request]) -> list[Decision]:
    """``place_all`` on a working copy the caller keeps: it ends holding the placed replicas."""
    decisions: list[Decision] = [Unplaced("")] * len(requests)
    for i in batch_order(requests):
        request = requests[i]
        decision = place(work, request)
        if isinstance(decision, Placed):
            work.assign(decision.node, request.deployment, request.resources)
        decisions[i] = decision
    return decisions


def _why(
    view: ClusterView, request: Request, chosen: int, price: float, cheapest: float, count: int
) -> str:
    node = view.nodes[chosen]
    same = view.on_node.get(request.deployment, Counter())[chosen]
    parts = [f"{count} node(s) fit"]
    if price <= cheapest * 1.0001:
        parts.append(f"cheapest share (${price:.4f}/h)")
    else:
        parts.append(f"share ${price:.4f}/h vs cheapest ${cheapest:.4f}/h")
    parts.append("already in use" if view.replicas[chosen] else "empty node")
    parts.append(
        f"{same} other replica(s) of {request.deployment} here"
        if same
        else f"no replica of {request.deployment} here"
    )
    if node.zone:
        parts.append(f"zone {node.zone}")
    return f"{node.id}: " + "; ".join(parts)


def _why_not(view: ClusterView, request: Request, eligible: npt.NDArray[np.bool_]) -> str:
    """A reason a user can act on: which resource is short, and the most any node has free."""
    want, policy = request.resources, request.policy
    needs = f"needs {want.describe()} per replica"
    if not view.nodes:
        return f"{needs}; there are no nodes"
    if not eligible.any():
        if not view.usable.any():
            states = sorted({n.state.value for n in view.nodes})
            return f"{needs}; no node takes replicas (nodes are {', '.join(states)})"
        wanted = ", ".join(f"{k}={v}" for k, v in policy.node_labels.items())
        if policy.zones:
            wanted = ", ".join(filter(None, [wanted, "zone in " + "|".join(policy.zones)]))
        if want.gpus and policy.gpu_type:
            wanted = ", ".join(filter(None, [wanted, f"gpu_type={policy.gpu_type}"]))
        return f"{needs}; no healthy node has the labels {wanted}"
    idx = np.flatnonzero(eligible)
    # what place() measured against: without GPUs, a GPU node's spare room (see place)
    free_cpu, free_mem = (view.free_cpu, view.free_mem) if want.gpus else (
        view.spare_cpu, view.spare_mem)  # fmt: skip
    for free, capacity, asked, unit in (
        (free_cpu, view.cap_cpu, want.cpu, "CPU"),
        (free_mem, view.cap_mem, float(want.memory_mb), "MB of memory"),
        (view.free_gpu, view.cap_gpu, float(want.gpus), "GPU"),
    ):
        best = int(idx[np.argmax(free[idx])])
        if free[best] < asked - 1e-9:
            largest = float(capacity[idx].max())
            never = f" (no node has more than {largest:g} {unit})" if largest < asked - 1e-9 else ""
            return (
                f"needs {asked:g} {unit} per replica; the largest free is "
                f"{max(free[best], 0):g} {unit} on {view.nodes[best].id}{never}"
            )
    best = int(idx[np.argmax(free_cpu[idx])])
    return (
        f"{needs}; no node has that much CPU and memory free at once (most CPU free: "
        f"{free_cpu[best]:g} CPU with {free_mem[best]:g} MB on {view.nodes[best].id})"
    )
