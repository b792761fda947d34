"""What a process can say about itself and the machine it runs on (psutil), for replicas on
other machines, whose processes the control plane cannot look at."""

from __future__ import annotations

from typing import Any

import psutil


class Usage:
    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading starts the interval
        psutil.cpu_percent(None)

    def report(self) -> dict[str, Any]:
        """This process's CPU (% of one core since the last report), RSS and open files, and the
        machine's CPU, memory and network counters."""
        with self._process.oneshot():
            process = {
                "cpu_percent": self._process.cpu_percent(None),
                "rss_bytes": self._process.memory_info().rss,
                "open_fds": self._process.num_fds(),
            }
        return {"process": process, "node": node_usage()}


def node_usage() -> dict[str, float]:
    """This machine's CPU (% of all cores since the last call), memory and network counters."""
    memory = psutil.virtual_memory()
    net = psutil.net_io_counters()
    return {
        "cpu_percent": psutil.cpu_percent(None),
        "memory_used_bytes": memory.used,
        "memory_total_bytes": memory.total,
        "network_received_bytes": net.bytes_recv,
        "network_sent_bytes": net.bytes_sent,
    }
