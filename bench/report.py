"""Where every benchmark puts its results: bench/results/<name>-<time>.json and .md."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, result: dict[str, Any], table: str) -> None:
    """Write the result (with the machine it ran on) as JSON and the table as Markdown, then
    print the table."""
    RESULTS.mkdir(exist_ok=True)
    result = {**result, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}-{stamp}.md").write_text(table.rstrip("\n") + "\n")
    print()
    print(table)
    print(f"written: bench/results/{name}-{stamp}.json and .md")
