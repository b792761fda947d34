"""The README's tour, run literally and in order, as a new user on a 2-core laptop would.

Every fenced ``bash`` and ``python`` block of the "A five-minute tour" section runs as written,
in a fresh copy of the checkout with no ``.venv`` (so ``make run`` installs what it installs for
a new user, and nothing of the dev install helps), with ``HOME`` a fresh folder (the state lands
in ``~/.modelplane`` there) and the local node offering 2 CPUs, as a 2-core laptop does.
``make run`` runs in the background; every other command runs as typed in a second terminal in
the same folder. A command followed by a ``# error: ...`` line must fail with that message
(``<...>`` stands for any text); every other command must succeed, and nothing may print a
traceback. A few commands also have checks of what a user reads in their output (``CHECKS``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from modelplane.testing import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"


@dataclass
class Step:
    language: str  # bash or python
    code: str
    error: str | None = None  # the message a failing command must print


def tour_steps(readme: str) -> list[Step]:
    """The tour section's code blocks, split into commands."""
    section = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    steps: list[Step] = []
    for language, body in re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S):
        if language == "python":
            steps.append(Step("python", body))
            continue
        lines = body.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            stripped = line.strip()
            if stripped.startswith("# error:"):
                steps[-1].error = stripped.removeprefix("# error:").strip()
                continue
            if not stripped or stripped.startswith("#"):
                continue
            command = line
            while command.rstrip().endswith("\\"):  # continued lines
                command += "\n" + lines[i]
                i += 1
            if heredoc := re.search(r"<<'(\w+)'", command):
                while lines[i] != heredoc.group(1):
                    command += "\n" + lines[i]
                    i += 1
                command += "\n" + lines[i]
                i += 1
            steps.append(Step("bash", command))
    return steps


def matches(expected: str, text: str) -> bool:
    """``expected`` (with ``<...>`` for any text) is in ``text``, whitespace aside."""
    flat = " ".join(text.split())
    pattern = ".*?".join(
        re.escape(" ".join(part.split())) for part in re.split(r"<[^>]+>", expected)
    )
    return re.search(pattern, flat) is not None


# what a user reads in the output of some commands (keyed by the command's start)
CHECKS: dict[str, Callable[[str], bool]] = {
    "modelplane deployments list": lambda out: "iris:1" in out and "ready" in out,
    "modelplane predict iris": lambda out: '"label"' in out,
    # the iris call, then the digits one (its top label for the sample seven)
    "curl": lambda out: (
        '"model_name":"iris"' in out.replace(" ", "") or '"data":["seven"' in out.replace(" ", "")
    ),
    "modelplane push tiny-llm": lambda out: "pushed tiny-llm:1 from transformers" in out,
    "modelplane deploy tiny-llm": lambda out: "ready" in out,
    "modelplane push digits/model.onnx": lambda out: "pushed digits:1" in out,
    "modelplane push flowers.onnx --name flowers --description": lambda out: (
        "pushed flowers:1" in out
    ),
    "modelplane models alias": lambda out: "flowers@production → flowers:1" in out,
    "modelplane deploy flowers@production": lambda out: "ready" in out,
    "modelplane deployments status flowers": lambda out: "2/2 ready" in out,
    "modelplane models show flowers": lambda out: all(
        word in out for word in ("my first model", "team=ml", "float_input", "production")
    ),
    "modelplane predict flowers": lambda out: '"label"' in out,
    "modelplane deployments logs flowers": lambda out: "infer status=200" in out,
    "modelplane push forest.joblib --name forest --trust-pickle": lambda out: (
        "pushed forest:1 from sklearn" in out and "parity" in out
    ),
    "modelplane deploy forest": lambda out: "ready" in out,
    "modelplane predict forest": lambda out: '"label"' in out,
    "modelplane optimize flowers:1": lambda out: "created flowers:2" in out,
    "modelplane nodes list": lambda out: "NODE" in out.upper(),
    "modelplane deploy flowers --name lazy": lambda out: "scaled to zero" in out,
    "modelplane predict lazy": lambda out: '"label"' in out,
    "modelplane deployments status lazy": lambda out: "0 -> 1 replicas" in out,
    "modelplane deploy flowers:2": lambda out: "ready" in out,
    "modelplane deploy flowers:1 --canary": lambda out: (
        "traffic: flowers:2 90%, flowers:1 10%" in out
    ),
    "modelplane promote flowers": lambda out: "promoted: flowers serves flowers:1" in out,
    "modelplane rollback flowers": lambda out: "rolled back: flowers serves flowers:2" in out,
    "modelplane apply -f platform.yaml": lambda out: out.strip() == "no change",
}


def check_for(command: str) -> Callable[[str], bool] | None:
    first = command.splitlines()[0]
    found = [k for k in CHECKS if first.startswith(k)]
    return CHECKS[max(found, key=len)] if found else None


def fresh_checkout(into: Path) -> Path:
    """The checkout's files as git sees them (tracked, and untracked but not ignored), without
    .venv or anything else ignored: what a new user has after cloning."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``make run`` and everything it started, by process group."""
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    os.killpg(proc.pid, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(group, timeout=60)
    for p in alive:
        p.kill()
    proc.wait(timeout=10)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.timeout(1200)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    home = tmp_path / "home"  # ~ of the user who follows the tour: ~/.modelplane starts empty
    home.mkdir()
    steps = tour_steps((ROOT / "README.md").read_text())
    assert steps[0].code.strip() == "make run", "the tour starts the platform first"
    for port in (8000, 8001):
        assert port_free(port), f"the tour uses ports 8000 and 8001: free port {port}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODELPLANE_", "VIRTUAL_ENV", "PYTHONPATH"))}  # fmt: skip
    env |= {"HOME": str(home), "COLUMNS": "160", "MODELPLANE_SCHEDULER__NODE_CPUS": "2"}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT / ".venv"))
    )  # not this checkout's venv: the copy makes its own
    checkout = fresh_checkout(tmp_path / "modelplane")
    serve_log = tmp_path / "make-run.log"
    with serve_log.open("wb") as log:
        server = subprocess.Popen(
            ["bash", "-c", steps[0].code], cwd=checkout, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    terminal = checkout  # the second terminal is in the checkout too (source .venv/bin/activate)
    try:

        def up() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"make run exited:\n{serve_log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{URL}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=600)  # make run installs first
        banner = serve_log.read_text()
        assert "modelplane is up" in banner
        assert f"{URL}/docs" in banner
        assert str(home / ".modelplane" / "admin.key") in banner
        state: list[str] = []  # commands whose effect later commands need (source, export, cd)
        for number, step in enumerate(steps[1:], start=2):
            if step.language == "python":
                script = tmp_path / f"step{number}.py"
                script.write_text(step.code)
                command = f"python {script}"
            else:
                command = step.code
            result = subprocess.run(
                ["bash", "-c", "\n".join([*state, command])], cwd=terminal, env=env,
                capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            said = (
                f"step {number}: {step.code}\n--- stdout\n{result.stdout}\n--- stderr\n"
                f"{result.stderr}"
            )
            assert "Traceback" not in result.stdout + result.stderr, said
            if step.error is not None:
                assert result.returncode != 0, said
                assert matches(f"error: {step.error}", result.stderr), said
            else:
                assert result.returncode == 0, said
                check = check_for(step.code) if step.language == "bash" else None
                assert check is None or check(result.stdout), said
            if step.language == "bash" and step.code.split()[0] in ("source", "export", "cd"):
                state.append(step.code)
    finally:
        stop_group(server)
        shutil.rmtree(checkout / ".venv", ignore_errors=True)  # 600 MB a run: not kept
    assert "Traceback" not in serve_log.read_text()
