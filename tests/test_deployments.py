"""Deployments: prefect.yaml and deployments/definitions.py agree, parameters are typed and documented,
and they register with a real Prefect API (the compose file: tests/test_compose.py)."""


import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from deployments.definitions import RETRAIN_CRON, ROOT, SPECS, load_flow
from steermoe.config import load_config

PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())
BY_NAME = {d["name"]: d for d in PREFECT_YAML["deployments"]}


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_prefect_yaml_mirrors_the_python_definitions(spec):
    for name, pool in ((spec.name, "steermoe-process"), (f"{spec.name}-docker", "steermoe-docker")):
        d = BY_NAME[name]
        assert d["entrypoint"] == spec.entrypoint
        assert d["description"] == spec.description
        assert {k: v for k, v in d["parameters"].items() if k != "overrides"} == spec.parameters
        assert d["work_pool"]["name"] == pool
        assert [s["cron"] for s in d.get("schedules") or []] == ([spec.cron] if spec.cron else [])
    assert BY_NAME[f"{spec.name}-docker"]["work_pool"]["job_variables"]["env"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_retrain_check_runs_on_a_weekly_cron():
    from prefect.client.schemas.schedules import CronSchedule

    assert CronSchedule(cron=RETRAIN_CRON, timezone="UTC").cron == "0 6 * * 1"  # validates the expression
    with pytest.raises(ValueError):
        CronSchedule(cron="61 6 * * 1")
    assert [s.name for s in SPECS if s.cron] == ["retrain-if-prompts-changed"]


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_deployment_parameters_are_typed_documented_and_valid(name):
    d = BY_NAME[name]
    flow = load_flow(d["entrypoint"])
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    validate(d["parameters"], schema, raise_on_error=True)
    for pname, prop in schema["properties"].items():
        assert prop.get("description"), f"{flow.name}: parameter {pname} has no description"
    if "config" in schema["properties"]:
        run_config = schema["definitions"]["RunConfig"]["properties"]
        assert all(p.get("description") or "$ref" in p or "allOf" in p for p in run_config.values())
    # The config the deployment runs with loads (with the docker deployments' overrides too).
    cfg = load_config(ROOT / d["parameters"]["config_path"], d["parameters"].get("overrides"))
    assert cfg.run_name


def test_served_deployments_register_with_their_schedule_and_schema(prefect_api):
    from prefect.client.orchestration import get_client

    from deployments.definitions import runner_deployments

    ids = {d.name: d.apply() for d in runner_deployments("configs/demo.yaml")}
    with get_client(sync_client=True) as client:
        got = {name: client.read_deployment(i) for name, i in ids.items()}
    assert set(got) == {s.name for s in SPECS}
    retrain = got["retrain-if-prompts-changed"]
    assert [s.schedule.cron for s in retrain.schedules] == [RETRAIN_CRON]
    assert retrain.parameters == {"config_path": "configs/demo.yaml", "promote_after": True}
    props = got["safety-pipeline"].parameter_openapi_schema["properties"]
    assert set(props) == {"config", "config_path", "overrides"}
    assert "RunConfig" in got["safety-pipeline"].parameter_openapi_schema["definitions"]


def test_deploy_creates_a_process_pool_and_points_runs_at_this_checkout(prefect_api):
    from prefect.client.orchestration import get_client

    from deployments.definitions import deploy_all

    ids = deploy_all("steermoe-process-test", "configs/demo.yaml")
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("steermoe-process-test")
        deployment = client.read_deployment(ids["safety-pipeline"])
    assert pool.type == "process"
    assert deployment.work_pool_name == "steermoe-process-test"
    assert deployment.entrypoint == "flows/pipeline.py:safety_pipeline"
    assert str(ROOT) in str(deployment.pull_steps)
