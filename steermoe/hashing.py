"""Exact integer hashing on any torch device: counter-based random values and on-device tensor digests.

Everything here uses int64 tensors holding values below 2**32, multipliers below 2**31 and sums of fewer than
2**31 such values, so no operation overflows: results are the same bits on CPU and GPU, in any reduction order.
:mod:`steermoe.random_model` draws seeded weights from it; :func:`device_digest` lets the fine-tuning integrity
check hash a 61 GB model where it lives instead of streaming it through the CPU.
"""

from __future__ import annotations

import hashlib

__all__ = ["M32", "mix32_", "index_hash", "device_digest"]

M32 = (1 << 32) - 1
_MUL = (0x7FEB352D, 0x2C1B3C6D, 0x297A2D39, 0x68E31DA5)
_CHUNK = 1 << 24  # elements per step (int64 temporaries of 128 MiB)


def mix32_(x, k: int = 0):
    """In-place 32-bit hash (xorshift-multiply rounds ``k``, ``k + 1``) of an int64 tensor of values < 2**32."""
    for i, mul in enumerate(_MUL[k : k + 2]):
        x.bitwise_xor_(x >> (16 if i == 0 else 15))
        x.mul_(mul).bitwise_and_(M32)
    x.bitwise_xor_(x >> 16)
    return x


def index_hash(start: int, stop: int, k1: int, k2: int, device):
    """hash(k1, k2, i) for i in [start, stop): an int64 tensor of 32-bit values."""
    import torch

    idx = torch.arange(start, stop, dtype=torch.int64, device=device)
    h = mix32_((idx & M32).bitwise_xor_(k1), 0)
    return mix32_(h.bitwise_xor_(idx >> 32).bitwise_xor_(k2), 2)


def device_digest(t) -> bytes:
    """128-bit digest of a tensor's bytes computed on its device: two sums of per-word hashes keyed by position
    (a changed, moved or swapped word changes them), with dtype and shape, through BLAKE2b. Not the CPU digest of
    :func:`steermoe.finetune.integrity.tensor_digest`: compare digests made on the same kind of device."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    raw = flat.view(torch.uint8)
    if raw.numel() % 4:
        raw = torch.cat([raw, raw.new_zeros(4 - raw.numel() % 4)])
    words = raw.view(torch.int32)
    sums = []
    for k1, k2 in ((0x9E3779B9, 0x85EBCA6B), (0xC2B2AE35, 0x27D4EB2F)):
        total = torch.zeros((), dtype=torch.int64, device=words.device)
        for start in range(0, words.numel(), _CHUNK):
            stop = min(start + _CHUNK, words.numel())
            x = words[start:stop].to(torch.int64).bitwise_and_(M32)
            total += mix32_(x.bitwise_xor_(index_hash(start, stop, k1, k2, words.device)), 0).sum()
        sums.append(int(total))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}:{sums[0]}:{sums[1]}".encode())
    return h.digest()
