"""Forward hooks on every MoE router that keep what the router returned, on the device.

Two ways to use :class:`RouterRecorder`:

* free mode (routing drift, teacher-forced checks): every router call is appended to a per-layer list
  of device tensors; :meth:`RouterRecorder.stacked` concatenates them into ``(tokens, layers, k)`` host arrays.
* batch mode (generation): :meth:`RouterRecorder.start_batch` preallocates device buffers
  ``(batch, capacity, layers, k)``; each router call writes its ``(batch, steps, k)`` indices at that
  layer's cursor; :meth:`RouterRecorder.end_batch` moves the buffers to host once.

The hook reads the indices the router itself returned (never a recomputed top-k), so what is recorded
is what the experts module was given to dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steermoe.adapters import adapter_for, moe_layers

__all__ = ["RouterRecorder", "Capture"]


@dataclass
class Capture:
    """Host copy of recorded routing. Batch mode: ``(batch, positions, layers, k)``; free mode ``(tokens, layers, k)``."""

    experts: np.ndarray  # int16
    weights: np.ndarray | None = None  # float16, same shape as experts
    logits: np.ndarray | None = None  # float16, last dim = num_experts
    filled: int = 0  # positions written (batch mode)


def _output_slots(output) -> tuple[int, int | None, int | None]:
    """Positions of (indices, weights, logits) in a router's output tuple, found once per recorder."""
    import torch

    tensors = list(output) if isinstance(output, (tuple, list)) else [output]
    idx = next(i for i, t in enumerate(tensors) if torch.is_tensor(t) and not t.is_floating_point())
    k = tensors[idx].shape[-1]
    floats = [i for i, t in enumerate(tensors) if torch.is_tensor(t) and t.is_floating_point()]
    weights = next((i for i in floats if tensors[i].shape[-1] == k), None)
    logits = next((i for i in floats if tensors[i].shape[-1] != k), None)
    return idx, weights, logits


class RouterRecorder:
    """Context manager adding a forward hook to every MoE router of ``model``.

    ``layers`` are the model's own decoder-layer indices of the MoE blocks (dense layers absent).
    """

    def __init__(self, model, *, logits: bool = False, weights: bool = False):
        self.adapter = adapter_for(model)
        self.moe = moe_layers(model, self.adapter)
        self.layers = [m.layer for m in self.moe]
        self.top_k = self.adapter.top_k(model.config)
        self.num_experts = self.adapter.num_experts(model.config)
        self.record_logits = logits
        self.record_weights = weights
        self._handles: list = []
        self._slots: tuple | None = None
        self._calls: list[list[tuple]] = [[] for _ in self.layers]
        self._buffers: dict | None = None
        self._cursor: list[int] = []
        self.enabled = True

    # -- hooks --------------------------------------------------------------------------------
    def __enter__(self) -> RouterRecorder:
        for slot, m in enumerate(self.moe):
            self._handles.append(m.router.register_forward_hook(self._make_hook(slot)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._buffers = None

    def _make_hook(self, slot: int):
        def hook(module, args, output):
            if not self.enabled:
                return
            if self._slots is None:
                self._slots = _output_slots(output)
            i_idx, i_w, i_lg = self._slots
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            idx = tensors[i_idx]  # (T, k)
            w = tensors[i_w] if self.record_weights and i_w is not None else None
            lg = tensors[i_lg] if self.record_logits and i_lg is not None else None
            if self._buffers is None:
                self._calls[slot].append((idx.detach(), None if w is None else w.detach(), None if lg is None else lg.detach()))
            else:
                self._write(slot, idx, w, lg)

        return hook

    def _write(self, slot: int, idx, w, lg) -> None:
        b = self._batch
        tokens = idx.shape[0]
        assert tokens % b == 0, f"router saw {tokens} tokens, not a multiple of the batch {b}"
        steps = tokens // b
        c = self._cursor[slot]
        assert c + steps <= self._capacity, "more positions than the buffer was sized for"
        self._buffers["experts"][:, c : c + steps, slot].copy_(idx.view(b, steps, -1))
        if w is not None:
            self._buffers["weights"][:, c : c + steps, slot].copy_(w.view(b, steps, -1))
        if lg is not None:
            self._buffers["logits"][:, c : c + steps, slot].copy_(lg.view(b, steps, -1))
        self._cursor[slot] = c + steps

    # -- batch mode ---------------------------------------------------------------------------
    def start_batch(self, batch: int, capacity: int, device=None) -> None:
        """Preallocate device buffers for ``batch`` rows of up to ``capacity`` positions each."""
        import torch

        device = device or self.moe[0].router.weight.device
        n_layers = len(self.layers)
        self._batch, self._capacity = batch, capacity
        self._cursor = [0] * n_layers
        self._buffers = {"experts": torch.zeros(batch, capacity, n_layers, self.top_k, dtype=torch.int16, device=device)}
        if self.record_weights:
            self._buffers["weights"] = torch.zeros(batch, capacity, n_layers, self.top_k, dtype=torch.float16, device=device)
        if self.record_logits:
            self._buffers["logits"] = torch.zeros(batch, capacity, n_layers, self.num_experts, dtype=torch.float16, device=device)

    def end_batch(self) -> Capture:
        """Move the batch's buffers to host (one copy each) and leave batch mode."""
        assert self._buffers is not None, "end_batch without start_batch"
        filled = self._cursor[0]
        assert all(c == filled for c in self._cursor), f"layers saw different numbers of positions: {self._cursor}"
        host = {name: buf[:, :filled].cpu().numpy() for name, buf in self._buffers.items()}
        self._buffers = None
        return Capture(host["experts"], host.get("weights"), host.get("logits"), filled)

    def abort_batch(self) -> None:
        self._buffers = None

    # -- free mode ----------------------------------------------------------------------------
    def reset(self) -> None:
        self._calls = [[] for _ in self.layers]

    def stacked(self) -> Capture:
        """Every router call since the last reset, concatenated: ``(tokens, layers, k)`` on host."""
        import torch

        def cat(part: int):
            if any(c[part] is None for calls in self._calls for c in calls) or not self._calls[0]:
                return None
            per_layer = [torch.cat([c[part] for c in calls]) for calls in self._calls]  # L x (T, w)
            return torch.stack(per_layer, dim=1).cpu().numpy()  # (T, L, w)

        experts = cat(0)
        if experts is None:
            experts = np.zeros((0, len(self.layers), self.top_k), dtype=np.int16)
        weights, logits = cat(1), cat(2)
        return Capture(
            experts.astype(np.int16),
            None if weights is None else weights.astype(np.float16),
            None if logits is None else logits.astype(np.float16),
            len(experts),
        )
