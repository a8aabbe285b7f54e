"""Safe defaults, audited over the source: nothing read from a user is unpickled (the restricted SteerMoE-table
importer is the one exception, its allow-list checked here), no code runs from a model folder unless the
config says so, and every server we publish binds to loopback unless told otherwise."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("steermoe", "tasks", "flows", "deployments", "benchmarks")
AUDITED_UNPICKLER = Path("steermoe/import_table.py")
# Calls that deserialise code-carrying formats: (module alias or object, attribute).
UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("marshal", "loads"), ("shelve", "open"),
}


def sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(encoding="utf-8"))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                base = func.value.id if isinstance(func.value, ast.Name) else getattr(func.value, "attr", "<expr>")
                yield node, base, func.attr
            elif isinstance(func, ast.Name):
                yield node, None, func.id  # a bare name: a builtin or an imported function


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_nothing_unpickles_outside_the_audited_table_importer():
    found = []
    for path, tree in sources():
        for node, base, attr in calls(tree):
            if (base, attr) in UNSAFE_CALLS and path != AUDITED_UNPICKLER:
                found.append(f"{path}:{node.lineno} {base}.{attr}")
            if (base, attr) == ("torch", "load"):
                safe = keyword(node, "weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{path}:{node.lineno} torch.load without weights_only=True")
            if base in ("np", "numpy") and attr == "load":
                allow = keyword(node, "allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value:
                    found.append(f"{path}:{node.lineno} np.load(allow_pickle=True)")
            if base is None and attr in ("eval", "exec"):
                found.append(f"{path}:{node.lineno} {attr}()")
    assert not found, found


def test_no_load_turns_remote_code_on_by_itself():
    """``trust_remote_code`` is never a literal ``True``; transformers loads that pass it take it from the config."""
    found = []
    for path, tree in sources():
        for node, _, attr in calls(tree):
            value = keyword(node, "trust_remote_code")
            if isinstance(value, ast.Constant) and value.value is True:
                found.append(f"{path}:{node.lineno} {attr}(trust_remote_code=True)")
    assert not found, found


def test_the_unpickler_allow_list_admits_data_constructors_only():
    from steermoe.import_table import _ALLOWED

    dangerous_modules = {"os", "posix", "nt", "subprocess", "sys", "io", "shutil", "socket", "importlib", "runpy", "pickle", "code", "ctypes"}
    dangerous_names = {"eval", "exec", "compile", "getattr", "setattr", "__import__", "open", "input", "apply", "globals", "vars", "breakpoint"}
    for module, name in _ALLOWED:
        assert module.split(".")[0] not in dangerous_modules, (module, name)
        assert name not in dangerous_names, (module, name)
        assert not name.startswith("read_") and name not in ("load", "loads", "eval", "query"), (module, name)


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "builtins.getattr", "pandas.read_pickle", "pandas.eval", "numpy.load", "subprocess.Popen"])
def test_the_unpickler_refuses_globals_that_run_code(target, tmp_path):
    """A pickle naming each global gets refused before the global is even imported."""
    from steermoe.errors import InputError
    from steermoe.import_table import restricted_load

    module, _, name = target.rpartition(".")
    payload = b"\x80\x04c" + module.encode() + b"\n" + name.encode() + b"\n."  # protocol 4, GLOBAL, STOP
    with pytest.raises(InputError, match=rf"refused to unpickle {module}\.{name}"):
        restricted_load(payload, "evil.pkl")


def test_published_server_ports_bind_to_loopback():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    published = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert published
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port


def test_secrets_in_urls_are_masked():
    from steermoe.servers import redact_url

    assert redact_url("postgresql://mlflow:s3cr3t@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert redact_url("see http://u:p@h/x and https://h/y") == "see http://u:***@h/x and https://h/y"
    assert redact_url("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_a_config_refuses_a_password_in_the_tracking_uri():
    """A run config becomes a Prefect parameter and a stored record: credentials stay in the environment."""
    from steermoe.config import load_config
    from steermoe.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, ["tracking.mlflow_uri=postgresql://mlflow:s3cr3t@db:5432/mlflow"])
    assert "tracking.mlflow_uri" in str(err.value) and "MLFLOW_TRACKING_URI" in str(err.value)
    assert "s3cr3t" not in str(err.value)
    assert load_config(None, ["tracking.mlflow_uri=postgresql://mlflow@db:5432/mlflow"]).tracking.mlflow_uri.endswith("/mlflow")
