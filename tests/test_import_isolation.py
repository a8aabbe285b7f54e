import subprocess
import sys


def test_importing_the_library_pulls_in_no_orchestration_or_gx():
    code = (
        "import sys, steermoe, steermoe.config, steermoe.prompts, steermoe.validation, steermoe.selection, "
        "steermoe.routing, steermoe.adapters, steermoe.cli\n"
        "bad = sorted(m for m in ('prefect', 'mlflow', 'great_expectations', 'deepspeed') if m in sys.modules)\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_library_module_imports_prefect():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "steermoe"
    offenders = [str(p) for p in root.rglob("*.py") if "import prefect" in p.read_text() or "from prefect" in p.read_text()]
    assert offenders == []
