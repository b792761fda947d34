"""A conversion that fails tells its user what failed and which id to quote, and its operator
(the server log) everything else. Real worker processes, driven through the services."""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from modelplane.domain import Conversion
from modelplane.registry.conversions import ConversionOptions
from modelplane.registry.service import PushRequest
from modelplane.server import Platform

SECRET = "/srv/secret/weights.bin"


class Runs:
    """A trusted pickle whose loading runs ``code`` in the conversion worker."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> Any:
        return (exec, (self.code,))


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def convert(platform: Platform, payload: Any) -> Conversion:
    registry, conversions = platform.services.registry, platform.services.conversions
    request = PushRequest("m", trust_pickle=True)
    upload = await registry.upload(request, one_chunk(pickle.dumps(payload, protocol=4)))
    job = conversions.start(request, upload, ConversionOptions())
    for _ in range(1200):  # the worker's imports take a few seconds on a loaded machine
        job = conversions.get(job.id)
        if job.state != "running":
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"conversion {job.id} still running")


def assert_written_for_users(error: str, conversion_id: str) -> None:
    assert conversion_id in error
    assert "push it again" in error
    for internal in ("Traceback", SECRET, "RuntimeError", 'File "', ".py"):
        assert internal not in error


CRASHES = {
    "raises": (
        f"raise RuntimeError('cannot read {SECRET}')",
        "the converter hit an unexpected error",
        f"RuntimeError: cannot read {SECRET}",
    ),
    "dies": (
        f"import os, sys; sys.stderr.write('dying in {SECRET}'); sys.stderr.flush(); os._exit(3)",
        "the conversion process exited with status 3",
        f"dying in {SECRET}",
    ),
}


@pytest.mark.parametrize("case", sorted(CRASHES))
async def test_an_unexpected_failure_names_the_id_and_logs_the_details(
    platform: Platform, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    code, reason, detail = CRASHES[case]
    with caplog.at_level(logging.ERROR, logger="modelplane.conversions"):
        job = await convert(platform, Runs(code))
    assert job.state == "failed"
    # what the client reads
    shown = (await api.get(f"/api/v1/conversions/{job.id}")).json()
    assert shown["error"] == job.error
    assert reason in shown["error"]
    assert_written_for_users(shown["error"], job.id)
    # what the operator reads: the id with the traceback or the worker's last words
    [record] = [r for r in caplog.records if r.name == "modelplane.conversions"]
    logged = record.getMessage()
    assert job.id in logged
    assert detail in logged
    if case == "raises":
        assert "Traceback (most recent call last)" in logged


async def test_an_expected_failure_keeps_its_message(platform: Platform) -> None:
    job = await convert(platform, {"not": "a model"})
    assert job.error == "the pickle holds a dict, not a scikit-learn estimator"
