"""Scheduler benchmark: placement on a simulated large cluster, judged against an LP bound.

    .venv/bin/python bench/scheduler.py [--nodes 10000] [--replicas 100000] [--deployments 5000]
                                        [--failures 100] [--results DIR]

The cluster: nodes of nine instance types (general, compute, memory, GPU; a few discounted
ones) in four zones, prices varying by zone. The load: replicas of mixed sizes from deployments
of mixed sizes, placed one deployment after another with modelplane's own placement
(``modelplane.scheduler.placement``), then 100 nodes lost (their replicas re-placed) and a
scale-up wave. Reported: placements per second, the cost per hour of the nodes in use against
a lower bound from the LP relaxation (scipy's HiGHS, node types aggregated), the largest share
of any deployment on one node and one zone, and the time to re-place the failed nodes' replicas.

Writes bench/results/scheduler-<time>.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import linprog

from modelplane.domain import Node, NodeState, PlacementPolicy, Resources
from modelplane.scheduler.placement import ClusterView, Placed, Request, batch_order, place
from report import add_results_option, save

ZONES = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]  # one region: one price


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpu: float
    memory_gb: int
    gpus: int
    cost: float
    share: float  # of the fleet


TYPES = [
    InstanceType("m.xlarge", 4, 16, 0, 0.192, 0.20),
    InstanceType("m.4xlarge", 16, 64, 0, 0.768, 0.20),
    InstanceType("m.12xlarge", 48, 192, 0, 2.304, 0.08),
    InstanceType("c.4xlarge", 16, 32, 0, 0.680, 0.15),
    InstanceType("c.9xlarge", 36, 72, 0, 1.530, 0.07),
    InstanceType("r.4xlarge", 16, 128, 0, 1.008, 0.12),
    InstanceType("r.8xlarge", 32, 256, 0, 2.016, 0.06),
    InstanceType("m.4xlarge-reserved", 16, 64, 0, 0.480, 0.05),  # discounted, scarce
    InstanceType("g.12xlarge", 48, 192, 4, 3.912, 0.07),
]
# replica sizes: (cpu, memory MB, gpus), weight
SIZES = [
    ((0.25, 512, 0), 0.25),
    ((0.5, 1024, 0), 0.25),
    ((1.0, 2048, 0), 0.20),
    ((1.0, 4096, 0), 0.10),
    ((2.0, 8192, 0), 0.10),
    ((4.0, 16384, 0), 0.08),
    ((2.0, 8192, 1), 0.02),
]


def make_nodes(count: int, rng: np.random.Generator) -> list[Node]:
    kinds = rng.choice(len(TYPES), size=count, p=[t.share for t in TYPES])
    zones = rng.choice(ZONES, size=count)
    nodes = []
    for i, (k, zone) in enumerate(zip(kinds, zones, strict=True)):
        t = TYPES[int(k)]
        nodes.append(
            Node(
                f"node-{i}",
                Resources(t.cpu, t.memory_gb * 1024, t.gpus),
                {"zone": str(zone), "instance_type": t.name},
                cost_per_hour=t.cost,
                gpu_type="t4" if t.gpus else "",
            )
        )
    return nodes


def make_requests(replicas: int, deployments: int, rng: np.random.Generator) -> list[Request]:
    """Deployments of one size each, replica counts skewed (many small, a few large)."""
    counts = rng.geometric(1 / (replicas / deployments), size=deployments)
    counts = np.maximum(1, np.round(counts * replicas / counts.sum())).astype(int)
    sizes = rng.choice(len(SIZES), size=deployments, p=[w for _, w in SIZES])
    gpu = np.array([SIZES[int(k)][0][2] > 0 for k in sizes])
    counts[gpu] = np.minimum(counts[gpu], 8)  # GPU fleets are small
    cpu_only = np.flatnonzero(~gpu)
    counts[cpu_only[-1]] += replicas - counts.sum()  # exactly ``replicas`` in all
    requests: list[Request] = []
    for d, (count, size) in enumerate(zip(counts, sizes, strict=True)):
        cpu, memory, gpus = SIZES[int(size)][0]
        policy = PlacementPolicy(gpu_type="t4" if gpus else "")
        resources = Resources(cpu, memory, gpus)
        requests.extend(Request(f"dep-{d}", resources, policy) for _ in range(int(count)))
    return requests


def lp_bound(nodes: list[Node], requests: list[Request]) -> float:
    """The LP relaxation of "pay for the nodes in use": node types (type x zone) aggregated,
    replicas and nodes fractional, so its optimum is a lower bound on any real placement."""
    types: dict[tuple[str, float], list[Node]] = defaultdict(list)
    for n in nodes:
        types[(n.instance_type, n.cost_per_hour)].append(n)
    kinds = list(types)
    classes = Counter((r.resources.cpu, r.resources.memory_mb, r.resources.gpus) for r in requests)
    shapes = list(classes)
    nt, nk = len(kinds), len(shapes)
    # variables: y_t (nodes of type t paid for), then z_kt (replicas of class k on type t)
    cost = np.concatenate([[k[1] for k in kinds], np.zeros(nk * nt)])
    a_ub, b_ub = [], []
    for t, kind in enumerate(kinds):
        cap = types[kind][0].capacity
        for dim, capacity in ((0, cap.cpu), (1, cap.memory_mb), (2, cap.gpus)):
            row = np.zeros(nt + nk * nt)
            row[t] = -capacity
            for k, shape in enumerate(shapes):
                row[nt + k * nt + t] = shape[dim]
            a_ub.append(row)
            b_ub.append(0.0)
    a_eq, b_eq = [], []
    for k, shape in enumerate(shapes):
        row = np.zeros(nt + nk * nt)
        row[nt + k * nt : nt + (k + 1) * nt] = 1
        a_eq.append(row)
        b_eq.append(classes[shape])
    bounds = [(0, len(types[k])) for k in kinds] + [(0, None)] * (nk * nt)
    result = linprog(cost, A_ub=np.array(a_ub), b_ub=b_ub, A_eq=np.array(a_eq), b_eq=b_eq,
                     bounds=bounds, method="highs")  # fmt: skip
    if not result.success:
        raise RuntimeError(f"LP failed: {result.message}")
    return float(result.fun)


def spread(view: ClusterView, requests: list[Request], where: dict[int, str]) -> dict[str, Any]:
    node_zone = {n.id: n.zone for n in view.nodes}
    per_dep: dict[str, list[str]] = defaultdict(list)
    for i, node in where.items():
        per_dep[requests[i].deployment].append(node)
    node_share = zone_share = 0.0
    all_on_one = 0
    for nodes in per_dep.values():
        if len(nodes) < 2:
            continue
        top_node = Counter(nodes).most_common(1)[0][1]
        top_zone = Counter(node_zone[n] for n in nodes).most_common(1)[0][1]
        node_share = max(node_share, top_node / len(nodes))
        zone_share = max(zone_share, top_zone / len(nodes))
        all_on_one += top_node == len(nodes)
    return {"max_node_share": node_share, "max_zone_share": zone_share, "all_on_one": all_on_one}


def cost_in_use(view: ClusterView) -> float:
    return float(view.cost[view.replicas > 0].sum())


def run(
    node_count: int, replica_count: int, deployment_count: int, failures_count: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    nodes = make_nodes(node_count, rng)
    requests = make_requests(replica_count, deployment_count, rng)
    view = ClusterView(nodes)
    where: dict[int, str] = {}
    print(f"placing {len(requests):,} replicas of {deployment_count:,} deployments "
          f"on {node_count:,} nodes ...", flush=True)  # fmt: skip
    seconds, unplaced = place_requests(view, requests, batch_order(requests), where)
    bound = lp_bound(nodes, [requests[i] for i in where])
    cost = cost_in_use(view)
    placed = {
        "replicas": len(requests),
        "placed": len(where),
        "unplaced": unplaced,
        "seconds": seconds,
        "placements_per_s": len(requests) / seconds,
        "cost_per_hour": cost,
        "lp_lower_bound": bound,
        "cost_over_bound": cost / bound,
        "nodes_in_use": int((view.replicas > 0).sum()),
        **spread(view, requests, where),
    }

    # node failures: the nodes are marked lost and the next reconcile step (as in
    # ``planning.plan``) builds its view from the nodes and the replicas still running, then
    # places the lost nodes' replicas again on what is left
    used = [n for n in range(node_count) if view.replicas[n] > 0]
    count = min(failures_count, len(used))
    failed = {view.nodes[int(i)].id for i in rng.choice(used, size=count, replace=False)}
    moved = [i for i, node in where.items() if node in failed]
    for i in moved:
        del where[i]
    nodes = [replace(n, state=NodeState.LOST) if n.id in failed else n for n in nodes]
    started = time.perf_counter()
    view = ClusterView.build(
        nodes, ((node, requests[i].deployment, requests[i].resources) for i, node in where.items())
    )
    rebuild_s = time.perf_counter() - started
    replace_s, replace_unplaced = place_requests(view, requests, moved, where)
    failures = {
        "failed_nodes": len(failed),
        "replicas_moved": len(moved),
        "view_seconds": rebuild_s,
        "seconds": replace_s,
        "unplaced": replace_unplaced,
        **spread(view, requests, where),
    }

    # scale-up wave: 10% more replicas on the largest deployments
    by_size = Counter(r.deployment for r in requests)
    first = {r.deployment: r for r in reversed(requests)}
    wave: list[Request] = []
    for deployment, count in by_size.most_common():
        wave.extend([first[deployment]] * max(1, count // 5))
        if len(wave) >= replica_count // 10:
            break
    offset = len(requests)
    requests.extend(wave)
    wave_s, wave_unplaced = place_requests(
        view, requests, list(range(offset, len(requests))), where
    )
    scale_up = {
        "replicas": len(wave),
        "seconds": wave_s,
        "placements_per_s": len(wave) / wave_s,
        "unplaced": wave_unplaced,
        "cost_per_hour": cost_in_use(view),
    }
    return {"placement": placed, "node_failures": failures, "scale_up": scale_up}


def place_requests(
    view: ClusterView, requests: list[Request], indices: list[int], where: dict[int, str]
) -> tuple[float, int]:
    unplaced = 0
    started = time.perf_counter()
    for i in indices:
        decision = place(view, requests[i])
        if isinstance(decision, Placed):
            view.assign(decision.node, requests[i].deployment, requests[i].resources)
            where[i] = decision.node
        else:
            unplaced += 1
    return time.perf_counter() - started, unplaced


def table(result: dict[str, Any]) -> str:
    p, f, s = result["placement"], result["node_failures"], result["scale_up"]
    rows = [
        ("replicas placed", f"{p['placed']:,} of {p['replicas']:,}", "all"),
        ("placement wall time", f"{p['seconds']:.1f} s", "< 60 s"),
        ("placements per second", f"{p['placements_per_s']:,.0f}", ""),
        ("cost per hour (nodes in use)", f"${p['cost_per_hour']:,.0f}", ""),
        ("LP lower bound (HiGHS)", f"${p['lp_lower_bound']:,.0f}", ""),
        ("cost / bound", f"{p['cost_over_bound']:.3f}", "<= 1.05"),
        ("largest share of a deployment on one node", f"{p['max_node_share']:.2f}", "< 1"),
        ("largest share of a deployment in one zone", f"{p['max_zone_share']:.2f}", ""),
        ("deployments (2+ replicas) all on one node", f"{p['all_on_one']}", "0"),
        (
            f"re-place {f['replicas_moved']:,} replicas of {f['failed_nodes']} lost nodes",
            f"{f['seconds']:.2f} s (+ {f['view_seconds']:.2f} s to build the step's view)",
            "< 5 s",
        ),
        ("after failures: all on one node", f"{f['all_on_one']}", "0"),
        (
            f"scale-up wave of {s['replicas']:,} replicas",
            f"{s['seconds']:.1f} s ({s['placements_per_s']:,.0f}/s), {s['unplaced']} unplaced",
            "",
        ),
    ]
    lines = ["| measure | result | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=100_000)
    parser.add_argument("--deployments", type=int, default=5_000)
    parser.add_argument("--failures", type=int, default=100, help="nodes lost at once")
    parser.add_argument("--seed", type=int, default=7)
    add_results_option(parser)
    args = parser.parse_args()
    result = run(args.nodes, args.replicas, args.deployments, args.failures, args.seed)
    sizes = {k: v for k, v in vars(args).items() if k != "results"}
    save("scheduler", {"args": sizes, **result}, table(result), args.results)


if __name__ == "__main__":
    main()
