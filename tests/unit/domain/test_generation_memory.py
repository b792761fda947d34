"""A language model's replica reserves its weights, a KV cache row of the full context per
stream slot, and the process; other models keep the default."""

from __future__ import annotations

from modelplane.domain.resources import GENERATION_OVERHEAD_MB, generation_memory_mb

# a 100M-parameter Llama in fp32: 12 layers, 4 KV heads of 64, context 512
REPORT = {"memory": {"weights_bytes": 400 << 20, "kv_bytes_per_token": 2 * 12 * 4 * 64 * 4,
                     "context_length": 512}}  # fmt: skip


def test_weights_plus_one_cache_row_per_slot() -> None:
    cache_mb = 32 * 512 * (2 * 12 * 4 * 64 * 4) // (1 << 20)  # 384 MB for 32 slots
    assert generation_memory_mb(REPORT, 32) == 400 + cache_mb + GENERATION_OVERHEAD_MB
    assert generation_memory_mb(REPORT, 1) < generation_memory_mb(REPORT, 32)  # type: ignore[operator]


def test_other_models_have_no_estimate() -> None:
    assert generation_memory_mb({"passed": True}, 32) is None
    assert generation_memory_mb(None, 32) is None
