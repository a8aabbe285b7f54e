"""Forward hooks on every MoE router that keep what the router returned, on the device.

Two ways to use :class:`RouterRecorder`:

* free mode (routing drift, teacher-forced checks): every router call is appended to a per-layer list
  of device tensors; :meth:`RouterRecorder.stacked` concatenates them into ``(tokens, layers, k)`` host arrays.
* batch mode (generation): :meth:`RouterRecorder.start_batch` preallocates device buffers
  ``(batch, capacity, layers, k)``; each router call writes its ``(batch, steps, k)`` indices at that
  layer's cursor; :meth:`RouterRecorder.end_batch` moves the buffers to host once. With a device-side
  ``position`` the writes go to ``position + arange(steps)`` instead of a host cursor, and buffers of one
  shape are reused from batch to batch: a CUDA graph captured over the hooks then keeps recording when replayed.

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
        self._position = None  # device cursor (one long), when the caller moves it
        self._kept: dict[tuple[int, int], dict] = {}  # device-cursor buffers by (batch, capacity), reused
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
        import torch

        b = self._batch
        tokens = idx.shape[0]
        assert tokens % b == 0, f"router saw {tokens} tokens, not a multiple of the batch {b}"
        steps = tokens // b
        if self._position is not None:
            # (steps,) on the device: no host sync; inside a graph capture the arange belongs to the graph's own pool.
            where = self._position + torch.arange(steps, device=idx.device)
            for name, part in (("experts", idx), ("weights", w), ("logits", lg)):
                if part is not None:
                    buf = self._buffers[name]
                    buf[:, :, slot].index_copy_(1, where, part.view(b, steps, -1).to(buf.dtype))
            return
        c = self._cursor[slot]
        assert c + steps <= self._capacity, "more positions than the buffer was sized for"
        self._buffers["experts"][:, c : c + steps, slot].copy_(idx.view(b, steps, -1))
        if w is not None:
            self._buffers["weights"][:, c : c + steps, slot].copy_(w.view(b, steps, -1))
        if lg is not None:
            self._buffers["logits"][:, c : c + steps, slot].copy_(lg.view(b, steps, -1))
        self._cursor[slot] = c + steps

    # -- batch mode ---------------------------------------------------------------------------
    def start_batch(self, batch: int, capacity: int, device=None, position=None) -> None:
        """Preallocate device buffers for ``batch`` rows of up to ``capacity`` positions each.

        ``position``: a one-element device long tensor the caller sets before each forward (device-cursor mode).
        """

        device = device or self.moe[0].router.weight.device
        n_layers = len(self.layers)
        self._batch, self._capacity = batch, capacity
        self._cursor = [0] * n_layers
        self._position = position
        if position is not None:
            if (batch, capacity) not in self._kept:
                self._kept.clear()  # one shape at a time: a new shape frees the old buffers
                self._kept[(batch, capacity)] = self._allocate(batch, capacity, n_layers, device)
            self._buffers = self._kept[(batch, capacity)]
            return
        self._buffers = self._allocate(batch, capacity, n_layers, device)

    def buffers_token(self) -> tuple:
        """Identity of the current batch buffers (a graph captured over the hooks is valid while this is unchanged)."""
        if self._buffers is None or not self.enabled:
            return ()
        return tuple((name, buf.data_ptr()) for name, buf in sorted(self._buffers.items()))

    def _allocate(self, batch: int, capacity: int, n_layers: int, device) -> dict:
        import torch

        buffers = {"experts": torch.zeros(batch, capacity, n_layers, self.top_k, dtype=torch.int16, device=device)}
        if self.record_weights:
            buffers["weights"] = torch.zeros(batch, capacity, n_layers, self.top_k, dtype=torch.float16, device=device)
        if self.record_logits:
            buffers["logits"] = torch.zeros(batch, capacity, n_layers, self.num_experts, dtype=torch.float16, device=device)
        return buffers

    def end_batch(self, filled: int | None = None) -> Capture:
        """Move the batch's buffers to host (one copy each) and leave batch mode.

        ``filled``: positions written, required in device-cursor mode (the caller moved the cursor).
        """
        assert self._buffers is not None, "end_batch without start_batch"
        if self._position is None:
            filled = self._cursor[0]
            assert all(c == filled for c in self._cursor), f"layers saw different numbers of positions: {self._cursor}"
        assert filled is not None and filled <= self._capacity, "device-cursor mode needs end_batch(filled)"
        # A real copy even on CPU (where .cpu() is the same memory): device-cursor buffers are reused by the next batch.
        host = {name: buf[:, :filled].to("cpu", copy=True).numpy() for name, buf in self._buffers.items()}
        self.abort_batch()
        return Capture(host["experts"], host.get("weights"), host.get("logits"), filled)

    def abort_batch(self) -> None:
        self._buffers = None
        self._position = None

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
