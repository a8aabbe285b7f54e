"""`steermoe run` end to end, timed and measured per stage: wall time, peak GPU memory, peak host memory.

Writes the padded prompt set the config names (``steermoe pad-prompts``), then runs ``steermoe run`` (the CLI, in
this process) ``--runs`` times on the same config: the first run computes every stage, later ones should be all
``Cached``. A sampler thread reads the device's used memory (NVML: every process on the GPU, the fine-tuning
launcher's children included) and the resident memory of this process tree (psutil) every 0.2 s; each stage's peak
is the maximum over its time window. The fine-tuning processes also report their own PyTorch allocator peak.

    python3 benchmarks/pipeline_bench.py --config configs/gpu-qwen3-30b-a3b.yaml --train 1024 --eval 128 --runs 2 \\
        --json pipeline.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30


class Sampler(threading.Thread):
    """(time, device bytes used, host bytes resident in this process tree) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.samples, self._stop_event = interval, [], threading.Event()
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = (pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception:  # no NVML (CPU machine): host memory only
            self._nvml = None

    def _gpu(self) -> int | None:
        if self._nvml is None:
            return None
        pynvml, handle = self._nvml
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    @staticmethod
    def _host() -> int:
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.time(), self._gpu(), self._host()))
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak(self, t0: float, t1: float) -> tuple[float | None, float]:
        window = [s for s in self.samples if t0 <= s[0] <= t1] or [min(self.samples, key=lambda s: abs(s[0] - t1))]
        gpu = [s[1] for s in window if s[1] is not None]
        return (max(gpu) / GIB if gpu else None), max(s[2] for s in window) / GIB


def instrument_stages(windows: list) -> None:
    """Record each stage's (run, stage, start, end, state) around the flow's stage runner."""
    import torch

    from flows import pipeline

    original = pipeline._Runner.__call__
    cuda = torch.cuda.is_available()

    def timed(self, stage_task, *args):
        stage = stage_task.fn.__name__
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        try:
            return original(self, stage_task, *args)
        finally:
            windows.append({
                "stage": stage, "start": t0, "end": time.time(), "state": self.states.get(stage, "Failed"),
                # This process's PyTorch allocator peak (the fine-tuning processes report their own).
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
            })

    pipeline._Runner.__call__ = timed


def job_metrics(record: dict) -> dict:
    """What the fine-tuning processes reported: load time, training-loop time, steps, allocator peak."""
    out = {}
    jobs = {"selected": record.get("patch_path")} | {k: v.get("patch_path") for k, v in record.get("baselines", {}).items()}
    for name, patch in jobs.items():
        if not patch:
            continue
        metrics_path = Path(patch).parent / "metrics.json"
        m = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        out[name] = {k: m.get(k) for k in ("model_load_seconds", "seconds", "steps", "peak_gpu_gib", "trainable_params", "total_params", "final_loss")}
        weights = Path(patch) / "experts.safetensors"
        out[name]["patch_bytes"] = weights.stat().st_size if weights.exists() else None
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value (repeatable)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--train", type=int, default=1024)
    ap.add_argument("--eval", dest="eval_rows", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--keep-prompts", action="store_true", help="reuse the padded prompt set when it exists (a later, "
                    "separate invocation of the same runs: the device tool's calls are at most 10 minutes each)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from steermoe.cli import run_app
    from steermoe.config import load_config

    sampler = Sampler()
    sampler.start()
    windows: list[dict] = []
    instrument_stages(windows)
    cfg = load_config(args.config, args.overrides)
    prompts_path = Path(cfg.prompts.sources[0].path)
    t0 = time.time()
    rc = 0
    if not (args.keep_prompts and prompts_path.exists()):
        rc = run_app(["pad-prompts", str(prompts_path), "--config", args.config, *sum((["--set", o] for o in args.overrides), []),
                      "--tokens", str(args.tokens), "--train", str(args.train), "--eval", str(args.eval_rows)])
    pad_seconds = time.time() - t0
    if rc:
        raise SystemExit(f"pad-prompts failed with exit code {rc}")
    runs = []
    for i in range(args.runs):
        start = len(windows)
        t0 = time.time()
        try:
            rc = run_app(["run", "--config", args.config, *sum((["--set", o] for o in args.overrides), [])])
        except Exception as e:  # keep what was measured up to the failure
            print(f"run {i + 1} failed: {type(e).__name__}: {e}", file=sys.stderr)
            rc = 1
        wall = time.time() - t0
        stages = []
        for w in windows[start:]:
            gpu, host = sampler.peak(w["start"], w["end"])
            stages.append({**w, "seconds": round(w["end"] - w["start"], 2), "peak_gpu_gib": gpu and round(gpu, 2), "peak_host_gib": round(host, 2)})
        runs.append({"run": i + 1, "exit_code": rc, "wall_seconds": round(wall, 1), "stages": stages})
        if rc:
            break
    sampler.stop()
    result = {"config": args.config, "overrides": args.overrides, "pad_prompts_seconds": round(pad_seconds, 1), "runs": runs,
              "device": _device_name()}
    result.update(_details(cfg))
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


def _details(cfg) -> dict:
    """Facts from the first run's records: routing throughput, fine-tuning jobs, evaluation size."""
    import glob

    out_root = Path(cfg.output_dir) / cfg.run_name
    details: dict = {}
    manifests = sorted(glob.glob(str(out_root / "collect_routing" / "*" / "store" / "manifest.json")))
    if manifests:
        m = json.loads(Path(manifests[-1]).read_text())
        details["routing"] = {**(m.get("summary") or {}), "counts": m.get("counts")}
    records = sorted(glob.glob(str(out_root / "finetune" / "*" / "selected" / "metrics.json")))
    if records:
        folder = Path(records[-1]).parents[1]
        fake = {"patch_path": str(folder / "selected" / "patch"), "baselines": {}}
        if (folder / "random" / "patch").exists():
            fake["baselines"]["random"] = {"patch_path": str(folder / "random" / "patch")}
        details["finetune_jobs"] = job_metrics(fake)
    return details


def _device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        return "unknown"


def _print(result: dict) -> None:
    print(f"\npad-prompts: {result['pad_prompts_seconds']} s; device: {result['device']}")
    for run in result["runs"]:
        print(f"\nrun {run['run']}: exit {run['exit_code']}, {run['wall_seconds']} s wall")
        print("| stage | state | seconds | peak GPU GiB (device, NVML) | peak allocated GiB (pipeline process) | peak host GiB (process tree) |")
        print("|---|---|---:|---:|---:|---:|")
        for s in run["stages"]:
            print(f"| {s['stage']} | {s['state']} | {s['seconds']:.1f} | {s['peak_gpu_gib']} | {s['peak_allocated_gib']} | {s['peak_host_gib']} |")
    for key in ("routing", "finetune_jobs"):
        if key in result:
            print(f"{key}: {json.dumps(result[key])}")


if __name__ == "__main__":
    main()
