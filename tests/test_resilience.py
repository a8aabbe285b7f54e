"""Kill -9 and resume, concurrent runs, and secrets, on the real pipeline (``python -m steermoe run`` in
subprocesses, the tiny demo model, one Prefect server for the module, MLflow in SQLite).

- Concurrency: two runs of one config and a run of another start together on one cache dir and tracking
  store; every stage key is computed exactly once (the audit trail of :mod:`tasks.locking`), the two runs
  of one config get the same registered version, the other its own, and every store verifies.
- Kill and resume: the test SIGKILLs the pipeline process from outside, the moment it sees a stage in
  progress (a routing shard in the store's manifest, a fine-tuning step in ``steps.jsonl``, the
  evaluation's responses folder, the ``register`` run in the tracking store), then reruns; one more kill
  sits at a failpoint (``STEERMOE_KILL_AT``: between creating the registered version and moving its alias,
  a window of one request that no outside observer can hit). The last rerun finishes, the finished work
  is reused (shards untouched, fine-tuning resumed from its checkpoint, stages ``Cached``), its artifacts
  equal the uninterrupted run's byte for byte, and the registry holds exactly one version for the candidate.
- Secrets: the run that uses the LLM judge gets its API key from the environment; the key reaches the
  judge server and nothing else (stdout/stderr, every file under the cache dir, Prefect parameters,
  artifacts and logs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.concurrency_checks import assert_each_key_computed_once_and_every_result_intact, audit
from tests.conftest import ROOT, make_prompts

pytestmark = pytest.mark.slow

SECRET = "sk-steermoe-test-3f9a1c7e5b2d4086"  # a judge API key that must never be written anywhere
MODEL = "steermoe-resilience"
STAGES = ("validate_prompts", "prepare_model", "collect_routing", "risk_difference", "select_experts", "finetune", "evaluate", "register")


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers the rubric and counts requests carrying the key."""

    authorised = 0

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization") == f"Bearer {SECRET}":
            FakeJudge.authorised += 1
        body = json.dumps({"choices": [{"message": {"content": "#scores\n1.b 1\n2.b 1\n3.b 1"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_demo_model):
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("resilience")
    rows = make_prompts(n_safe=8, n_unsafe=8)
    for i, row in enumerate(rows):
        row["split"] = "eval" if i % 4 == 0 else "train"
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("STEERMOE_KILL_AT", None)
        yield SimpleNamespace(root=root, model=tiny_demo_model, env=env, judge_url=f"http://127.0.0.1:{judge.server_port}/v1")
    judge.shutdown()


def overrides(world, cache: Path, *extra: str) -> list[str]:
    base = [
        f"model.source={world.model}", "model.device=cpu", f"cache_dir={cache}", f"output_dir={cache / 'runs'}",
        f"prompts.sources=[{{path: {world.root / 'prompts.jsonl'}}}]", "prompts.validation.min_per_label=5",
        # One sequence a shard, eight steps with a checkpoint every two: windows an outside kill can hit.
        "generation.max_new_tokens=6", "routing.shard_sequences=1", "selection.threshold=-1", "selection.top_k=2",
        "finetune.max_steps=8", "finetune.checkpoint_every=2", "finetune.batch_size=4", "finetune.learning_rate=0.05", "finetune.warmup_steps=0",
        "finetune.baselines=[]", "finetune.answer_max_new_tokens=6", "finetune.device=cpu", "evaluation.max_new_tokens=6",
        "evaluation.bootstrap_samples=10", "evaluation.steering=false", "evaluation.routing_drift=false",
        f"tracking.registered_model={MODEL}", *extra,
    ]
    return [a for o in base for a in ("--set", o)]


def start(world, cache: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """``steermoe run`` in its own process; its output goes to files (a pipe nobody reads while the test
    watches the run would fill and stall it)."""
    cmd = [sys.executable, "-m", "steermoe", "run", *overrides(world, cache, *extra)]
    logs = cache.parent / f"{cache.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("*.out")))
    out, err = (open(logs / f"{n}.{kind}", "w+") for kind in ("out", "err"))
    proc = subprocess.Popen(cmd, cwd=world.root, env={**world.env, **(env or {})}, stdout=out, stderr=err, text=True)
    proc.logs = (out, err)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> SimpleNamespace:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = []
    for f in proc.logs:
        f.seek(0)
        text.append(f.read())
        f.close()
    return SimpleNamespace(code=proc.returncode, out=text[0], err=text[1])


def states(out: str) -> dict[str, str]:
    """The stage -> state table ``steermoe run`` prints."""
    return dict(re.findall(rf"^\W*({'|'.join(STAGES)})\W+(Completed|Cached)\b", out, re.M))


def versions(cache: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(cache / "mlflow" / "mlflow.db") as con:
        return con.execute("select name, version from model_versions order by version").fetchall()


def content(path: Path):
    """What a result file holds: bytes, except tensors by value (safetensors orders its header per process)
    and the comparison table without its timing column."""
    import pandas as pd
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return {k: v.numpy().tobytes() for k, v in sorted(load_file(str(path)).items())}
    if path.name == "comparison.csv":
        return pd.read_csv(path).drop(columns=["step_seconds"], errors="ignore").to_csv(index=False)
    return path.read_bytes()


def artifacts(cache: Path) -> dict[str, object]:
    """Every result a run leaves (keyed by path below the run folder)."""
    run = cache / "runs" / "demo"
    keep = ("*.parquet", "risk_table.csv", "selection.json", "experts.safetensors", "comparison.csv", "responses/*.jsonl", "prompts.jsonl")
    files = {str(p.relative_to(run)): content(p) for pattern in keep for p in run.rglob(pattern)}
    assert any(k.endswith("experts.safetensors") for k in files) and any(k.endswith("comparison.csv") for k in files), sorted(files)
    return files


@pytest.fixture(scope="module")
def concurrent(world):
    """Config X twice and config Y (other experts, plus the LLM judge with its key in the environment) at once."""
    cache = world.root / "shared"
    y = ("selection.top_k=3", "evaluation.judges=[string_match, llm]", f"evaluation.llm_judge_url={world.judge_url}", "evaluation.llm_judge_model=fake")
    procs = [start(world, cache), start(world, cache), start(world, cache, *y, env={"STEERMOE_JUDGE_API_KEY": SECRET})]
    results = [finish(p) for p in procs]
    for r in results:
        assert r.code == 0, (r.out + r.err)[-4000:]
    return SimpleNamespace(cache=cache, x1=results[0], x2=results[1], y=results[2])


def registered(result) -> str:
    return re.search(r"\(version (\d+)\)", result.out).group(1)


def test_concurrent_runs_do_each_stage_once_and_keep_their_results_apart(concurrent):
    assert_each_key_computed_once_and_every_result_intact(concurrent.cache)
    assert registered(concurrent.x1) == registered(concurrent.x2) != registered(concurrent.y)
    assert len(versions(concurrent.cache)) == 2


def test_a_secret_reaches_the_judge_and_no_output(world, concurrent):
    from prefect.client.orchestration import get_client

    assert FakeJudge.authorised > 0  # the key was used ...
    blob = SECRET.encode()
    for r in (concurrent.x1, concurrent.x2, concurrent.y):  # ... and written nowhere
        assert SECRET not in r.out + r.err
    leaked = [str(p) for p in concurrent.cache.rglob("*") if p.is_file() and blob in p.read_bytes()]
    assert not leaked
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        assert runs and SECRET not in json.dumps([r.parameters for r in runs], default=str)
        assert SECRET not in json.dumps([a.data for a in client.read_artifacts()], default=str)
        assert SECRET not in json.dumps([log.message for log in client.read_logs()], default=str)


def kill_when(proc: subprocess.Popen, seen: Callable[[], object], what: str, timeout: float = 300) -> SimpleNamespace:
    """SIGKILL ``proc`` from outside the moment ``seen()`` holds (polled every 10 ms), as an OOM killer or a
    preempted node would; fails if the run ends first."""
    started = time.monotonic()
    deadline = started + timeout
    while not seen():
        if proc.poll() is not None or time.monotonic() > deadline:
            result = finish(proc, timeout=1)
            pytest.fail(f"the run ended (code {result.code}) before {what}: " + (result.out + result.err)[-3000:])
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    print(f"SIGKILL sent {time.monotonic() - started:.1f} s after the start, on seeing {what}")
    result = finish(proc)
    assert result.code == -signal.SIGKILL, (result.out + result.err)[-4000:]
    return result


def one(run: Path, pattern: str) -> Path | None:
    return next(iter(sorted(run.glob(pattern))), None)


def shards_listed(run: Path) -> list[str]:
    manifest = one(run, "collect_routing/*/store/manifest.json")
    listed = json.loads(manifest.read_text()) if manifest else {}  # written atomically: never half a file
    return [] if listed.get("complete") else sorted(listed.get("shards", {}))


def steps_logged(run: Path) -> int:
    log = one(run, "finetune/**/steps.jsonl")
    return len(log.read_text().splitlines()) if log else 0


def register_runs(cache: Path) -> list[str]:
    """Statuses of the MLflow runs the register stage opened (read-only; a writer busy with the store is retried)."""
    try:
        with sqlite3.connect(f"file:{cache / 'mlflow' / 'mlflow.db'}?mode=ro", uri=True, timeout=0.05) as con:
            return [s for (s,) in con.execute("select status from runs where name = 'register'")]
    except sqlite3.Error:
        return []


def test_kill_9_at_every_stage_then_resume_gives_the_uninterrupted_artifacts(world, concurrent):
    from steermoe.routing import RoutingStore

    cache = world.root / "killed"
    run = cache / "runs" / "demo"
    kill_when(start(world, cache), lambda: shards_listed(run), "the first routing shard")
    manifest = one(run, "collect_routing/*/store/manifest.json")
    first = json.loads(manifest.read_text())
    assert first["shards"] and not first["complete"], first
    # Each listed shard is two files (sequences, tokens): their inode and mtime show whether a rerun rewrote them.
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in manifest.parent.glob("shard-*.parquet") if p.name.split(".")[0] in first["shards"]}
    assert len(written) == 2 * len(first["shards"])

    kill_when(start(world, cache), lambda: steps_logged(run) >= 3, "fine-tuning step 3")
    assert RoutingStore(manifest.parent).complete  # collection resumed ...
    assert {p: (q.stat().st_ino, q.stat().st_mtime_ns) for p, q in ((n, manifest.parent / n) for n in written)} == written  # ... reusing every shard
    assert not list(run.rglob("experts.safetensors")) and one(run, "finetune/**/checkpoints/latest")

    kill_when(start(world, cache), lambda: one(run, "evaluate/*/responses"), "evaluation")
    tuned = json.loads(next(run.rglob("finetune/**/metrics.json")).read_text())
    assert tuned["resumed_from_step"] in (2, 4, 6) and tuned["steps"] == 8  # fine-tuning resumed from its last checkpoint
    assert not list(run.rglob("comparison.csv"))

    kill_when(start(world, cache), lambda: register_runs(cache), "the register stage's first write")
    assert versions(cache) == [] and register_runs(cache) == ["RUNNING"]  # an orphan run, no version
    # Between creating the version and moving its alias there is one request: too short a window to hit
    # from outside, so this kill is the process's own, at a failpoint there.
    result = finish(start(world, cache, env={"STEERMOE_KILL_AT": "register.version_created"}))
    assert result.code == -signal.SIGKILL, (result.out + result.err)[-4000:]
    assert len(versions(cache)) == 1  # the version exists, its run was killed before the alias moved

    final = finish(start(world, cache))
    assert final.code == 0, (final.out + final.err)[-4000:]
    assert states(final.out) == {**{s: "Cached" for s in STAGES[:-1]}, "register": "Completed"}
    assert versions(cache) == [(MODEL, 1)] and registered(final) == "1"  # the killed run's version, reused
    same_as_x(artifacts(cache), artifacts(concurrent.cache))
    # Killed stages left no result: every stage key was completed exactly once over the six processes.
    assert audit(cache) == {s: [1] for s in STAGES}


def same_as_x(mine: dict, shared: dict) -> None:
    """The shared cache also holds run Y's files; the killed chain must equal run X's on every file it has."""
    missing = {k for k in mine if k not in shared}
    different = {k for k in mine if k in shared and mine[k] != shared[k]}
    assert not missing and not different, (sorted(missing), sorted(different))
