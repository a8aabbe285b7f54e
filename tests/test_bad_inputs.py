"""The bad-input corpus: every entry point (each CLI command, the flow and deployment parameters) fed broken
prompt files, models, selections, patches, routing stores, configs, unreachable servers and a full disk.

Every case runs the real CLI and asserts the contract of ``steermoe/errors.py``: a non-zero exit, exactly one
``error:`` line (the last thing on stderr; progress bars may come before it) that names what, where and how
to fix, no traceback, and no new file in the case's folder that a later run could mistake for a result (only
the files a case lists, such as the validation report of a failed validation, may appear). Cases marked
``proc`` run ``python -m steermoe`` in a subprocess (one per command family, and every case that needs its
own environment); the rest call the same entry point, :func:`steermoe.cli.run_app`, in this process, so
the corpus costs seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_prompts

PYTHON = sys.executable


# ---------------------------------------------------------------- the world the cases break


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def dense_model(dst: Path, tokenizer_from: Path) -> Path:
    """A real (tiny) dense Llama folder with the demo tokenizer: loads fine, has no experts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from steermoe.modeling import load_tokenizer

    tok = load_tokenizer(tokenizer_from)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok))
    LlamaForCausalLM(config).save_pretrained(str(dst))
    tok.save_pretrained(str(dst))
    return dst


def remote_code_model(dst: Path, marker: Path) -> Path:
    """A folder whose config points at model code in the folder; running that code would create ``marker``."""
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps({
        "model_type": "steermoe_custom_moe",
        "architectures": ["CustomMoE"],
        "auto_map": {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomMoE"},
    }))
    (dst / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return dst


def foreign_tokenizer_model(dst: Path, demo: Path) -> Path:
    """The demo model's weights with a tokenizer of a much larger vocabulary (another model's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    copy_model(demo, dst)
    for f in dst.glob("tokenizer*"):
        f.unlink()
    vocab = {f"w{i}": i for i in range(60000)} | {"<unk>": 60000, "<eos>": 60001}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(str(dst))
    return dst


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def flip_byte(path: Path, offset: int = 200) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def expert_patch(dst: Path, model_path: Path, base_fingerprint: str) -> Path:
    """A real expert patch of the demo model, claiming to be made for ``base_fingerprint``."""
    from steermoe.finetune.experts import prepare_selective
    from steermoe.finetune.patch import save_patch
    from steermoe.modeling import load_model
    from steermoe.selection import ExpertSelection

    selection = ExpertSelection([(0, 1), (1, 2)], [1.0, 1.0], "manual")
    plan = prepare_selective(load_model(model_path, device="cpu"), selection)
    return save_patch(dst, plan, base_fingerprint, selection)


class Evil:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class World:
    root: Path
    model: Path
    prompts: Path
    env: dict = field(default_factory=dict)

    def base(self, *extra: str) -> list[str]:
        """The overrides every model-loading case starts from: the tiny demo model, a small prompt file."""
        return [
            "--set", f"model.source={self.model}", "--set", "model.device=cpu", "--set", f"cache_dir={self.root / 'cache'}",
            "--set", f"output_dir={self.root / 'runs'}", "--set", f"prompts.sources=[{{path: {self.prompts}}}]",
            "--set", "prompts.validation.min_per_label=5", "--set", "generation.max_new_tokens=4", "--set", "finetune.device=cpu",
            *extra,
        ]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_demo_model) -> World:
    from steermoe.modeling import model_fingerprint
    from tests.test_routing_store import _write

    root = tmp_path_factory.mktemp("bad_inputs")
    prompts = make_prompts(8, 8)
    for i, row in enumerate(prompts):
        row["split"] = "eval" if i % 4 == 0 else "train"
    w = World(root, Path(tiny_demo_model), write_jsonl(root / "prompts.jsonl", prompts))
    w.env = {**os.environ, "PYTHONPATH": str(ROOT), "STEERMOE_CACHE": str(root / "cache"), "MLFLOW_TRACKING_URI": ""}
    w.env.pop("MLFLOW_TRACKING_URI")
    inputs = root / "inputs"
    inputs.mkdir()
    # Prompt files.
    rows = make_prompts(12, 12)
    (inputs / "empty.jsonl").write_text("")
    (inputs / "empty.csv").write_text("")
    (inputs / "headerless.csv").write_text("".join(f"{r['id']},{r['prompt']},{r['label']}\n" for r in rows))
    (inputs / "wrong_columns.csv").write_text("text,kind\n" + "".join(f"{r['prompt']},{r['label']}\n" for r in rows))
    (inputs / "not_json.jsonl").write_text(json.dumps(rows[0]) + "\n{'id': 'x', prompt: nope}\n")
    (inputs / "latin1.jsonl").write_bytes(json.dumps(rows[0]).encode() + b"\n" + '{"id": "z", "prompt": "caf\xe9 au lait?", "label": "safe"}\n'.encode("latin-1"))
    write_jsonl(inputs / "duplicate_ids.jsonl", [{**r, "id": "s0"} if i == 1 else r for i, r in enumerate(rows)])
    write_jsonl(inputs / "both_labels.jsonl", rows + [{**rows[0], "id": "dup-text", "label": "unsafe"}])
    write_jsonl(inputs / "one_label.jsonl", [r for r in rows if r["label"] == "safe"])
    write_jsonl(inputs / "huge_prompt.jsonl", rows + [{"id": "huge", "prompt": "a" * 1_000_000, "label": "safe"}])
    write_jsonl(inputs / "control_chars.jsonl", rows + [{"id": "ctl", "prompt": "How do I\x00 bake\x1b[2J bread?", "label": "safe"}])
    write_jsonl(inputs / "unknown_label.jsonl", rows + [{"id": "odd", "prompt": "What is a cloud made of?", "label": "maybe"}])
    (inputs / "a_dir.jsonl").mkdir()
    # Configs.
    (inputs / "not_yaml.yaml").write_text("model:\n  source: [demo\n")
    (inputs / "list.yaml").write_text("- model\n- prompts\n")
    (inputs / "cfg_dir.yaml").mkdir()
    (inputs / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    # Models.
    (inputs / "no_config").mkdir()
    (inputs / "no_config" / "model.safetensors").write_bytes(b"\0" * 64)
    dense_model(inputs / "dense", w.model)
    remote_code_model(inputs / "remote", inputs / "REMOTE_CODE_RAN")
    foreign_tokenizer_model(inputs / "foreign_tok", w.model)
    truncate(copy_model(w.model, inputs / "truncated") / "model.safetensors")
    (inputs / "a_file").write_text("not a folder\n")
    # Selections.
    (inputs / "sel_bad_layer.json").write_text(json.dumps({"experts": [[42, 0]], "scores": [1.0], "strategy": "manual"}))
    (inputs / "sel_bad_expert.json").write_text(json.dumps({"experts": [[0, 99]], "scores": [1.0], "strategy": "manual"}))
    (inputs / "sel_not_json.json").write_text("experts: [[0, 1]]\n")
    (inputs / "sel_no_experts.json").write_text(json.dumps({"layers": [0]}))
    # Patches.
    expert_patch(inputs / "patch_other_base", w.model, "0123456789abcdef")
    truncate(expert_patch(inputs / "patch_truncated", w.model, model_fingerprint(w.model)) / "experts.safetensors")
    (inputs / "patch_empty").mkdir()
    # Routing stores.
    flip_byte(_write(inputs / "store_flipped").path / "shard-00001.tokens.parquet")
    truncate(_write(inputs / "store_truncated").path / "shard-00000.sequences.parquet")
    incomplete = _write(inputs / "store_incomplete").path / "manifest.json"
    incomplete.write_text(json.dumps({**json.loads(incomplete.read_text()), "complete": False}))
    # Tables.
    _write(inputs / "store_good")
    (inputs / "evil.pkl").write_bytes(pickle.dumps(Evil(inputs / "PICKLE_RAN")))
    (inputs / "wrong_table.csv").write_text("a,b\n1,2\n")
    (inputs / "random.bin").write_bytes(b"\x01\x02" + bytes(range(256)))
    return w


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    argv: object  # World -> list[str]
    expect: str  # a regex the error line must match (what / where / how to fix)
    code: int = 2
    may_create: tuple[str, ...] = ()  # globs (relative to the case folder) a failed run may leave behind
    env: object = None  # World -> extra environment
    stdout: bool = False  # the message is the report summary on stdout (validation failures)
    timeout: float = 90
    proc: bool = False  # run `python -m steermoe` in a subprocess

    @property
    def command(self) -> str:
        return self.id.split(":")[0]


def inp(name: str):
    return lambda w: str(w.root / "inputs" / name)


def validate(name: str, expect: str, code: int = 2, stdout: bool = False, proc: bool = False) -> Case:
    return Case(f"validate:{name}", lambda w: ["validate", inp(name)(w), "--min-per-label", "5"], expect, code=code, stdout=stdout, proc=proc)


def collect_with(model: str, expect: str, **kw) -> Case:
    return Case(f"collect:{model}", lambda w: ["collect", *w.base("--set", f"model.source={inp(model)(w)}"), "--out", "store"], expect, **kw)


def config(id: str, expect: str, *sets: str, path=None, proc: bool = False) -> Case:
    def argv(w):
        return ["config", "show", *(["--config", path(w)] if path else []), *[a for s in sets for a in ("--set", s)]]

    return Case(f"config:{id}", argv, expect, proc=proc)


def analyze(store: str, expect: str, proc: bool = False) -> Case:
    return Case(f"analyze:{store}", lambda w: ["analyze", "--store", inp(store)(w), "--out", "risk.parquet", "--plots", "plots"], expect, proc=proc)


def finetune_with(selection: str, expect: str) -> Case:
    return Case(f"finetune:{selection}", lambda w: ["finetune", *w.base("--set", "finetune.max_steps=1"), "--selection", inp(selection)(w), "--out", "ft"], expect)


def evaluate_patch(patch: str, expect: str) -> Case:
    return Case(f"evaluate:{patch}", lambda w: ["evaluate", *w.base("--set", "evaluation.max_new_tokens=2"), "--patch", inp(patch)(w), "--out", "ev"], expect)


CASES = [
    # Prompt files: unreadable files stop at load (exit 2, the file and line named) ...
    validate("empty.jsonl", r"empty\.jsonl: the file has no rows"),
    validate("empty.csv", r"empty\.csv: the file is empty; a CSV needs a header row"),
    validate("headerless.csv", r"headerless\.csv: no 'prompt' or 'messages' column .*add a header row"),
    validate("wrong_columns.csv", r"wrong_columns\.csv: no 'prompt' or 'messages' column \(columns: \['text', 'kind'\]\).*columns: \{prompt: "),
    validate("not_json.jsonl", r"not_json\.jsonl:2: not valid JSON", proc=True),
    validate("latin1.jsonl", r"validation FAILED: .*valid_utf8: 1", code=1, stdout=True),
    validate("a_dir.jsonl", r"a_dir\.jsonl: is a directory, expected a jsonl file"),
    validate("missing.jsonl", r"missing\.jsonl: no such file"),
    # ... and bad rows fail validation (exit 1) with every failing rule named in the report.
    validate("duplicate_ids.jsonl", r"validation FAILED: .*unique_id", code=1, stdout=True),
    validate("both_labels.jsonl", r"validation FAILED: .*unique_text: 2", code=1, stdout=True),
    validate("one_label.jsonl", r"validation FAILED: .*min_per_label", code=1, stdout=True),
    validate("huge_prompt.jsonl", r"validation FAILED: .*length", code=1, stdout=True),
    validate("control_chars.jsonl", r"validation FAILED: .*control", code=1, stdout=True),
    validate("unknown_label.jsonl", r"validation FAILED: .*label", code=1, stdout=True),
    # Configs: file problems and every key named with its path.
    config("not-yaml", r"not_yaml\.yaml:\d+: not valid YAML", path=inp("not_yaml.yaml")),
    config("top-level-list", r"list\.yaml: the top level must be a mapping", path=inp("list.yaml")),
    config("is-directory", r"cfg_dir\.yaml: is a directory, expected a YAML file", path=inp("cfg_dir.yaml")),
    config("missing-file", r"nope\.yaml: no such config file", path=lambda w: str(w.root / "nope.yaml")),
    config("not-utf8", r"binary\.yaml: not UTF-8", path=inp("binary.yaml")),
    config("unknown-key", r"config: trainer: unknown key", "trainer.lr=1", proc=True),
    config("unknown-nested-key", r"config: finetune\.lr: unknown key", "finetune.lr=1e-4"),
    config("negative-lr", r"config: finetune\.learning_rate: .*greater than 0", "finetune.learning_rate=-1e-4"),
    config("wrong-type", r"config: generation\.batch_size: .*integer", "generation.batch_size=many"),
    config("min-over-max-chars", r"config: prompts\.validation.*min_chars must not exceed max_chars", "prompts.validation.min_chars=50", "prompts.validation.max_chars=10"),
    config("top-k-over-experts", r"selection\.top_k: 1000 exceeds the model's 32 experts", "selection.top_k=1000"),
    config("override-without-equals", r"override 'finetune\.epochs': expected key\.path=value", "finetune.epochs"),
    config("run-name-path", r"config: run_name: .*plain name", "run_name=../escape"),
    config("routing-regulariser", r"finetune: .*routing_regulariser is not implemented.*remove the key", "finetune.routing_regulariser=0.5"),
    config("unknown-judge", r"evaluation\.judges: .*unknown judge\(s\) \['oracle'\]; choose from .*string_match", "evaluation.judges=[oracle]"),
    # Models.
    collect_with("no_config", r"no_config has no config\.json", proc=True),
    collect_with("a_file", r"a_file has no config\.json; is it a Hugging Face model folder"),
    collect_with("dense", r"model type 'llama' has no architecture adapter; supported: .*qwen3_moe"),
    collect_with("foreign_tok", r"foreign_tok: the tokenizer's vocabulary \(60002 tokens\) is larger than the model's embedding table"),
    collect_with("remote", r"remote.*trust_remote_code"),
    collect_with("truncated", r"truncated: cannot load model \(a weights file is truncated or corrupt: .*copy the model folder again"),
    Case("collect:missing-model", lambda w: ["collect", *w.base("--set", f"model.source={w.root / 'nowhere'}")], r"nowhere does not exist"),
    # Selections naming what the model does not have.
    finetune_with("sel_bad_layer.json", r"layer 42 is not an MoE layer of this model"),
    finetune_with("sel_bad_expert.json", r"experts \[99\] outside 0\.\.7"),
    finetune_with("sel_not_json.json", r"sel_not_json\.json: not a selection JSON file"),
    finetune_with("sel_no_experts.json", r"sel_no_experts\.json: not an expert selection \(needs 'experts'"),
    Case("evaluate:steer-bad-layer", lambda w: ["evaluate", *w.base(), "--steer", inp("sel_bad_layer.json")(w), "--out", "ev"], r"--steer .*layer 42 is not an MoE layer of this model \(MoE layers: \[0, 1, 2, 3\]\)"),
    # Patches.
    evaluate_patch("patch_other_base", r"patch was made for base model 0123456789abcdef"),
    evaluate_patch("patch_truncated", r"patch_truncated/experts\.safetensors: truncated or corrupt patch file"),
    evaluate_patch("patch_empty", r"patch_empty: not an expert patch"),
    # Routing stores.
    analyze("store_flipped", r"shard-00001\.tokens\.parquet: does not match the manifest checksum", proc=True),
    analyze("store_truncated", r"shard-00000\.sequences\.parquet: does not match the manifest checksum"),
    analyze("store_incomplete", r"routing store is incomplete .*re-run the same collection"),
    analyze("a_file", r"a_file: not a routing store"),
    analyze("missing_store", r"missing_store: not a routing store"),
    # Tables: the restricted unpickler refuses code, other files are named.
    Case("import-table:evil-pickle", lambda w: ["import-table", inp("evil.pkl")(w), "--out", "risk.parquet"], r"refused to unpickle (posix|os)\.system", proc=True),
    Case("import-table:wrong-columns", lambda w: ["import-table", inp("wrong_table.csv")(w), "--out", "risk.parquet"], r"not a SteerMoE table, missing column"),
    Case("select:random-bytes", lambda w: ["select", "--table", inp("random.bin")(w)], r"random\.bin: unknown table format"),
    Case("pad-prompts:unknown-shape", lambda w: ["pad-prompts", "p.jsonl", "--set", "model.source=random:no-such-shape"], r"random:no-such-shape: neither a known shape \(.*qwen3-30b-a3b"),
    Case("pad-prompts:too-short", lambda w: ["pad-prompts", "p.jsonl", "--set", "model.source=random:tiny-qwen3-moe", "--tokens", "4"], r"--tokens 4 is too short for a chat prompt; use at least 8"),
    Case("demo-model:unknown-arch", lambda w: ["demo-model", "--arch", "llama"], r"--arch 'llama': unknown demo architecture; choose one of qwen3_moe"),
    Case("compare:bad-pair", lambda w: ["compare", *w.base(), "--patch", "nopath"], r"--patch 'nopath': expected NAME=PATH"),
    # Servers that are not there: a clear line within a bounded time, never a hang.
    Case(
        "promote:unreachable-tracking", lambda w: ["promote", "--set", f"tracking.mlflow_uri=http://127.0.0.1:{closed_port()}"],
        r"tracking\.mlflow_uri: .*127\.0\.0\.1:\d+ is unreachable .*waited at most 5 s", timeout=180, proc=True,
    ),
    Case(
        "run:unreachable-prefect", lambda w: ["run", *w.base()], r"PREFECT_API_URL: .*127\.0\.0\.1:\d+/api is unreachable .*waited at most 5 s",
        env=lambda w: {"PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api"}, timeout=180, proc=True,
    ),
    Case("deploy:without-api", lambda w: ["deploy"], r"PREFECT_API_URL is not set", env=lambda w: {"PREFECT_API_URL": ""}, proc=True),
]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def registered_versions(cache: Path) -> int:
    import sqlite3

    db = cache / "mlflow" / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select count(*) from model_versions").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def run_steermoe(case: Case, world: World, cwd: Path, capfd, monkeypatch) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one CLI call: a subprocess for ``proc`` cases, else in this process."""
    argv = [str(a) for a in case.argv(world)]
    extra = case.env(world) if case.env else {}
    if case.proc:
        env = {k: v for k, v in {**world.env, **extra}.items() if v != ""}
        proc = subprocess.run([PYTHON, "-m", "steermoe", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=case.timeout)
        return proc.returncode, proc.stdout, proc.stderr
    from steermoe.cli import run_app

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("STEERMOE_CACHE", str(world.root / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    for key, value in extra.items():
        monkeypatch.setenv(key, value) if value else monkeypatch.delenv(key, raising=False)
    capfd.readouterr()
    code = run_app(argv)  # an exception escaping here is a traceback: the test fails with it
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_actionable_line(code: int, out: str, err: str, case: Case) -> None:
    import re

    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert code == case.code, (out + err)[-3000:]
    if case.stdout:
        lines = [line for line in out.splitlines() if line.startswith("validation FAILED")]
        assert len(lines) == 1, out[-2000:]
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1, err[-3000:]
        lines = errors
    assert re.search(case.expect, lines[0]), lines[0]


def assert_nothing_left(world: World, case: Case, folder: Path, inputs_before: set[str]) -> None:
    """No new file a later run could trust, nothing registered, no input touched, no code of the inputs run."""
    left = {f for f in _files(folder) if not any(Path(f).match(g) for g in case.may_create)}
    assert not left, left
    assert _files(world.root / "inputs") == inputs_before
    assert registered_versions(world.root / "cache") == 0
    assert not list((world.root / "runs").rglob("patch")) if (world.root / "runs").exists() else True
    assert not (world.root / "inputs" / "REMOTE_CODE_RAN").exists() and not (world.root / "inputs" / "PICKLE_RAN").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_one_actionable_line(world, case, tmp_path, capfd, monkeypatch):
    inputs_before = _files(world.root / "inputs")
    start = time.monotonic()
    code, out, err = run_steermoe(case, world, tmp_path, capfd, monkeypatch)
    assert time.monotonic() - start < case.timeout
    assert_one_actionable_line(code, out, err, case)
    assert_nothing_left(world, case, tmp_path, inputs_before)


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs filled to the last byte (we run as root in CI); skipped where mounting is not allowed."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(world, full_disk, tmp_path, capfd, monkeypatch):
    case = Case(
        "analyze:full-disk", lambda w: ["analyze", "--store", inp("store_good")(w), "--out", str(full_disk / "risk.parquet"), "--plots", str(full_disk / "plots")],
        r"No space left on device; free space on that disk .* and run again", code=1,
    )
    code, out, err = run_steermoe(case, world, tmp_path, capfd, monkeypatch)
    assert_one_actionable_line(code, out, err, case)
    assert _files(full_disk) == {"filler"}, _files(full_disk)


def test_the_corpus_covers_every_entry_point():
    from steermoe.cli.app import app, config_app

    commands = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    commands |= {"config"} if config_app.registered_commands else set()
    assert len(CASES) >= 40
    # serve runs until interrupted (its settings are deploy's); stages takes no input but two flags.
    assert commands - {c.command for c in CASES} <= {"serve", "stages"}


# ---------------------------------------------------------------- flow and deployment parameters


def _flows():
    from flows.pipeline import safety_pipeline
    from flows.promotion import promote
    from flows.retrain import retrain_if_prompts_changed

    return {"safety-pipeline": safety_pipeline, "promote": promote, "retrain-if-prompts-changed": retrain_if_prompts_changed}


def _bad_parameters(w: World):
    """(deployment, parameters a UI user could send, what the one line must say)."""
    from deployments.definitions import SPECS

    for spec in SPECS:
        yield spec.name, {**spec.parameters, "config_path": str(w.root / "gone.yaml")}, r"gone\.yaml: no such config file"
        yield spec.name, {**spec.parameters, "config_path": str(w.root / "inputs" / "not_yaml.yaml")}, r"not_yaml\.yaml:\d+: not valid YAML"
        yield spec.name, {**spec.parameters, "overrides": ["finetune.learning_rate=-1"]}, r"finetune\.learning_rate: Input should be greater than 0"
        yield spec.name, {**spec.parameters, "overrides": ["finetune.epochs"]}, r"override 'finetune\.epochs': expected key\.path=value"
        yield spec.name, {**spec.parameters, "config": {}}, r"give either config or config_path/overrides, not both"


def test_bad_flow_and_deployment_parameters_fail_before_any_work_with_one_line(world):
    """Every deployment's own parameters, each broken: the flow fails in its first line (config resolution),
    before a task, a model or the tracking store is touched."""
    from steermoe.errors import ConfigError

    flows = _flows()
    cases = list(_bad_parameters(world))
    assert len(cases) == 15
    for name, params, expect in cases:
        with pytest.raises(ConfigError, match=expect) as e:
            flows[name].fn(**params)
        assert "\n" not in str(e.value), (name, params)
    assert registered_versions(world.root / "cache") == 0


@pytest.mark.parametrize(
    "params, key",
    [({"config": {"finetune": {"learning_rate": -1}}}, "config.finetune.learning_rate"), ({"config": {"bogus": 1}}, "config.bogus"),
     ({"config": {"selection": {"strategy": "best"}}}, "config.selection.strategy"), ({"overrides": "finetune.epochs=2"}, "overrides")],
)
def test_prefect_rejects_mistyped_parameters_naming_the_key(params, key):
    """What a deployment run from the UI gets for a mistyped field: Prefect's parameter check names the key path."""
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match=rf"- {key}: "):
        _flows()["safety-pipeline"].validate_parameters(params)
