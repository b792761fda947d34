"""Where every benchmark puts its results: bench/results/<name>-<time>.json and .md (or the
folder given with ``--results``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, result: dict[str, Any], table: str, folder: Path = RESULTS) -> Path:
    """Write the result (with the machine it ran on) as JSON and the table as Markdown, print
    the table, and return the JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    written = folder / f"{name}-{stamp}.json"
    written.write_text(json.dumps(result, indent=2))
    written.with_suffix(".md").write_text(table.rstrip("\n") + "\n")
    print()
    print(table)
    print(f"written: {written} and .md")
    return written


def add_results_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder for the JSON and Markdown"
    )
