"""The Prefect deployments of ``elastic-rollout-validation``, declared once, here.

Three ways users run the flow (ARCHITECTURE.md, "Users and how they run it"):

- ``nightly``: a cron schedule (``TIDEGATE_NIGHTLY_CRON``, default ``0 2 * * *``, in
  ``TIDEGATE_NIGHTLY_TIMEZONE``, default UTC); its default parameters are the nightly spec file
  (``TIDEGATE_NIGHTLY_SPEC``) loaded and validated at registration, so the UI shows it filled in.
- ``manual``: no schedule; the RolloutSpec is the UI form, pre-filled with the same spec.
- ``release-gate``: no schedule; a flow of the *same name* whose parameters are what a release
  pipeline varies (``image``, ``model_source``, ``spec_path`` or an inline ``spec``,
  ``overrides``); it ends Failed when the gate fails, so
  ``prefect deployment run 'elastic-rollout-validation/release-gate' --watch`` exits non-zero.

Invariants:

- Entrypoints are module paths (``flows.validation.elastic_rollout_validation``), not file
  paths: a worker imports the installed package instead of copying the project directory into
  a temporary one (what Prefect does for a file entrypoint without pull steps).
- Runs execute in ``DeploymentSettings.project_dir`` (the project root; a pull step enters it),
  so relative spec paths and ``reports/`` mean the same as for ``tidegate validate``. On a
  Kubernetes pool set ``TIDEGATE_PROJECT_DIR`` to a directory that exists in the image.
- Parameter schemas are enforced by the server: a form value the schema refuses never starts
  a run. Secrets are never parameters: the spec names env variables or a Secret block.

Example::

    from flows.deployments import DeploymentSettings, build_deployments
    for d in build_deployments(DeploymentSettings(nightly_cron="30 1 * * *")):
        print(d.name, d.entrypoint)
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows import clusterlock
from flows.hooks import on_crashed, on_failure
from flows.release import release_spec, spec_parameters
from flows.runid import new_run_id
from flows.validation import elastic_rollout_validation, execute
from tasks.errors import SpecError
from tasks.spec import RolloutSpec, StageName, load_spec
from tasks.stages import normalize_stages

FLOW_NAME = "elastic-rollout-validation"
PROJECT_DIR = Path(__file__).resolve().parent.parent
K8S_JOB_TEMPLATE = PROJECT_DIR / "manifests" / "prefect-k8s-job-template.json"
DEFAULT_SPEC = "examples/qwen-chat.local.yaml"
DEPLOYMENT_NAMES = ("nightly", "manual", "release-gate")
TAGS = ["tidegate"]


class DeploymentSettings(BaseSettings):
    """Where and when the deployments run; every field is also an environment variable
    ``TIDEGATE_<FIELD>`` (e.g. ``TIDEGATE_NIGHTLY_CRON``) and a flag of
    ``tidegate deployments register``."""

    model_config = SettingsConfigDict(env_prefix="TIDEGATE_", extra="ignore")

    work_pool: str = Field("tidegate-local", min_length=1, max_length=128,
                           description="Work pool the deployments run on; created as a process "
                                       "pool by `tidegate deployments register` if missing.")
    pool_type: Literal["process", "kubernetes"] = Field(
        "process", description="Type of the work pool when it is created: process (runs on the worker's "
                               "machine) or kubernetes (each flow run a Job from "
                               "manifests/prefect-k8s-job-template.json).")
    job_variables: dict[str, Any] = Field(
        default_factory=dict, description="Job variables of the deployments (kubernetes: image, namespace, "
                                          "env, pod_labels, ...; see the job template's variables).")
    nightly_cron: str = Field("0 2 * * *", description="Cron expression of the nightly run.")
    nightly_timezone: str = Field("UTC", description="IANA time zone the cron is read in, e.g. "
                                                     "Europe/Berlin or Asia/Shanghai.")
    nightly_spec: Path = Field(Path(DEFAULT_SPEC),
                               description="RolloutSpec file whose content becomes the default "
                                           "parameters of `nightly` and `manual`.")
    release_spec: str = Field(DEFAULT_SPEC,
                              description="Default spec_path of `release-gate`, read by the "
                                          "worker at run time (relative to project_dir).")
    nightly_paused: bool = Field(False, description="Register the nightly schedule paused.")
    project_dir: Path = Field(PROJECT_DIR, description="Working directory of runs on a process "
                                                       "pool (reports/ and relative spec paths).")

    @field_validator("nightly_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. UTC, Europe/Berlin)") from None
        return value

    @field_validator("nightly_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValueError:
            raise ValueError(f"not a valid cron expression: {value!r} (e.g. '0 2 * * *')") from None
        return value

    def spec_file(self, path: str | Path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.project_dir / p


@flow(name=FLOW_NAME, log_prints=True, validate_parameters=True,
      on_failure=[on_failure], on_crashed=[on_crashed])
def release_gate(spec_path: str = DEFAULT_SPEC, image: str | None = None, model_source: str | None = None,
                 overrides: list[str] | None = None, stages: list[StageName] | None = None,
                 run_id: str | None = None, spec: RolloutSpec | None = None,
                 wait_for_cluster: bool = True) -> dict:
    """Gate a release: validate the spec with the image or model under test.

    The run ends Failed when the gate fails or a stage fails (and Crashed when the run could
    not finish), so a CI job can wait for it and trust its exit code.

    Args:
        spec_path: RolloutSpec file read by the worker (relative to the project directory).
        image: Model server image under test; replaces service.image of the spec.
        model_source: Weights under test (directory or file://, oss://, http(s):// URI);
            replaces model.source of the spec.
        overrides: Extra spec overrides as key.path=value, e.g. service.max_replicas=4.
        stages: Stages to run (stage, prepare, deploy, smoke, spike, verify, gate,
            teardown); empty runs the spec's stages, or all of them.
        run_id: Id of the run (names reports/<run_id>/ and labels what the run creates);
            empty generates one.
        spec: Inline RolloutSpec used instead of spec_path (for workers without the file).
        wait_for_cluster: Queue behind a validation (the nightly) that holds the cluster; false:
            stop at once (exit 2) instead of waiting.
    """
    resolved = release_spec(spec_path, image, model_source, overrides, spec)
    selected = normalize_stages(stages or resolved.stages)
    # a release gate that judges nothing would be a pass without evidence
    if "gate" not in selected:
        raise SpecError(f"stages: a release gate must run the gate stage (got {','.join(selected)})",
                        hint="leave stages empty to run the full chain")
    if not resolved.slo:
        raise SpecError("slo: a release gate needs at least one rule (the spec's slo is empty)")
    rid = run_id or new_run_id(resolved)
    print(f"release gate run {rid}: spec {resolved.name}, image {resolved.service.image}, "
          f"model {resolved.model.source}, stages {','.join(selected)}")
    with clusterlock.hold(resolved, wait=wait_for_cluster):
        outcome = execute(resolved, selected, rid, use_prefect=True)
    return {"run_id": outcome.run_id, "verdict": outcome.verdict, "report_dir": outcome.report_dir}


class WorkingDirectory:
    """RunnerStorage that pulls nothing: its pull step only enters ``path``.

    With a pull step Prefect's worker neither copies a local ``path`` into a temporary
    workspace nor needs the registering machine's directory to exist where the run executes.
    """

    def __init__(self, path: Path):
        self._path = Path(path)

    def set_base_path(self, path: Path) -> None:  # nothing to pull
        pass

    @property
    def pull_interval(self) -> int | None:
        return None

    @property
    def destination(self) -> Path:
        return self._path

    async def pull_code(self) -> None:
        pass

    def to_pull_step(self) -> dict[str, Any]:
        return {"prefect.deployments.steps.set_working_directory": {"directory": str(self._path)}}

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, WorkingDirectory) and other._path == self._path


def build_deployments(settings: DeploymentSettings | None = None, *, job_variables: dict[str, Any] | None = None):
    """The three RunnerDeployments, ready for ``.apply(work_pool_name=...)``.

    Reads and validates the nightly spec (a SpecError names the file and field)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    s = settings or DeploymentSettings()
    nightly_spec = load_spec(s.spec_file(s.nightly_spec))
    params = {"spec": spec_parameters(nightly_spec)}
    common: dict[str, Any] = dict(tags=TAGS, enforce_parameter_schema=True,
                                  entrypoint_type=EntrypointType.MODULE_PATH,
                                  work_pool_name=s.work_pool,
                                  job_variables={**s.job_variables, **dict(job_variables or {})})
    nightly = elastic_rollout_validation.to_deployment(
        name="nightly",
        description=(f"Nightly validation of {nightly_spec.name} ({s.nightly_spec}) at "
                     f"'{s.nightly_cron}' {s.nightly_timezone}; the report history is on the "
                     f"Artifacts page."),
        schedules=[Cron(s.nightly_cron, timezone=s.nightly_timezone, slug="nightly",
                        active=not s.nightly_paused)],
        parameters=params, **common)
    manual = elastic_rollout_validation.to_deployment(
        name="manual",
        description="Run the validation by hand: edit the RolloutSpec form (pre-filled with the "
                    "nightly spec) and pick the stages. Secrets are never form values: the spec "
                    "names environment variables or a Prefect Secret block.",
        parameters=params, **common)
    gate = release_gate.to_deployment(
        name="release-gate",
        description="Release gate for CI: set image and/or model_source (and spec_path); the run "
                    "ends Failed when the gate fails. `tidegate gate --deployment release-gate "
                    "--param image=... --junit out.xml` waits and maps the state to 0/1/2.",
        parameters={"spec_path": s.release_spec}, **common)
    for d in (nightly, manual, gate):
        d.storage = WorkingDirectory(s.project_dir)
    return [nightly, manual, gate]
