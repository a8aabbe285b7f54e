"""Screen demo-world variants over several seeds at once: build each demo model (recipe overrides, optionally another
wording.yaml) and score the base model on the dev and template eval splits (unsafe placeholder, safe and borderline
on topic: steermoe.demo.quality). One seed moves these by about 5 points, so compare means over seeds.

Built on a GPU this is a screen, not the shipped model: a CUDA build's floats differ from a CPU build's, so a seed
gives another model there; compare variants with each other, built the same way. On one H200 with 16 CPU cores,
16 builds of 1,200 steps side by side took about 345 s (README, "The demo world, measured").

    python benchmarks/demo_world_sweep.py --variant base --variant more-steps='{"steps": 1400}' \
        --variant old-words=@/path/to/wording.yaml --seeds 0-3 --parallel 16 --out sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_and_score(name: str, seed: int, overrides: dict, out_dir: str, device: str) -> dict:
    """One variant and seed: build the demo model on ``device`` with the project's builder, then score it."""
    from dataclasses import replace

    from steermoe.demo.model import META_FILE, build_demo_model
    from steermoe.demo.quality import demo_quality
    from steermoe.demo.recipe import DemoRecipe
    from steermoe.modeling import model_section

    started = time.perf_counter()
    model_dir = build_demo_model(Path(out_dir) / "model", replace(DemoRecipe(), seed=seed, **overrides), progress=False, device=device)
    meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
    row = {"variant": name, "seed": seed, "overrides": overrides, "corpus_examples": meta["corpus_examples"],
           "final_loss": meta["final_train_loss"], "train_s": round(meta["train_seconds"])}
    for split in ("dev", "eval"):
        q = demo_quality(model_dir, split, model=model_section(device=device))
        row[split] = {"unsafe_placeholder": q.unsafe_placeholder, "safe_on_topic": q.safe_on_topic,
                      "borderline_on_topic": q.borderline_on_topic, "over_refusal": q.over_refusal}
    row["seconds"] = round(time.perf_counter() - started)
    return row


def parse_variant(text: str) -> tuple[str, dict, str | None]:
    """``name``, ``name={json overrides}`` or ``name=@wording.yaml``."""
    name, _, spec = text.partition("=")
    if spec.startswith("@"):
        return name, {}, spec[1:]
    try:
        return name, (json.loads(spec) if spec else {}), None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--variant {text!r}: the overrides are not JSON ({exc}); e.g. --variant long='{{\"steps\": 1400}}'") from None


def parse_seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="name, name={json recipe overrides} or name=@wording.yaml")
    parser.add_argument("--seeds", default="0-3", help="a seed or a range, e.g. 0-3")
    parser.add_argument("--parallel", type=int, default=8, help="builds at a time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per worker for scoring (the build itself uses the recipe's build_threads)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="demo_world_sweep.jsonl")
    parser.add_argument("--one", nargs=3, metavar=("NAME", "SEED", "OVERRIDES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a worker process: its PYTHONPATH already points at the variant's copy of the package
        with tempfile.TemporaryDirectory() as tmp:
            row = build_and_score(args.one[0], int(args.one[1]), json.loads(args.one[2]), tmp, args.device)
        print("RESULT " + json.dumps(row), flush=True)
        return

    if not args.variant:
        parser.error("give at least one --variant (e.g. --variant base)")
    variants = [parse_variant(v) for v in args.variant]
    for name, _, wording in variants:
        if wording and not Path(wording).is_file():
            parser.error(f"--variant {name}: {wording} is not a file (give the path of a wording.yaml after '@')")
    work = Path(tempfile.mkdtemp(prefix="demo-sweep-"))
    paths = {}
    for name, _, wording in variants:  # each wording variant gets a copy of the package with its own wording.yaml
        paths[name] = str(ROOT)
        if wording:
            shutil.copytree(ROOT / "steermoe", work / name / "steermoe")
            shutil.copy(wording, work / name / "steermoe" / "demo" / "data" / "wording.yaml")
            paths[name] = str(work / name)
    jobs = [(name, seed, overrides) for seed in parse_seeds(args.seeds) for name, overrides, _ in variants]
    started, out, failed = time.perf_counter(), open(args.out, "a", encoding="utf-8"), []

    def run(job) -> None:
        name, seed, overrides = job
        path = os.pathsep.join(p for p in (paths[name], os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--one", name, str(seed), json.dumps(overrides)],
                              env=env, capture_output=True, text=True, cwd=work)
        rows = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not rows:
            print(f"{name} seed {seed}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            failed.append(f"{name} seed {seed}")
            return
        out.write(rows[-1] + "\n")
        out.flush()
        dev = json.loads(rows[-1])["dev"]
        print(f"{time.perf_counter() - started:5.0f} s  {name} seed {seed}: " + "  ".join(f"{k} {v:.3f}" for k, v in dev.items()), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(run, jobs))
    shutil.rmtree(work, ignore_errors=True)
    if len(failed) < len(jobs):
        summarise(args.out)
    if failed:
        raise SystemExit(f"{len(failed)} of {len(jobs)} builds failed ({', '.join(failed)}): see the error lines above")


def summarise(path: str) -> None:
    """Mean over seeds per variant, dev split."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r["dev"])
    print("\n| variant | seeds | unsafe placeholder | safe on topic | borderline on topic |\n|---|---:|---:|---:|---:|")
    for name, devs in by.items():
        mean = {k: sum(d[k] for d in devs) / len(devs) for k in devs[0]}
        print(f"| {name} | {len(devs)} | {mean['unsafe_placeholder']:.1%} | {mean['safe_on_topic']:.1%} | {mean['borderline_on_topic']:.1%} |")


if __name__ == "__main__":
    main()
