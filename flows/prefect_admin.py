"""Administering the Prefect server tidegate runs on: the ``deployments``, ``blocks``,
``automations`` and ``worker`` subcommands, and the checked client the ``gate`` subcommand
(flows/gatecmd.py) shares.

Invariants:

- Every command talks to the server named by ``PREFECT_API_URL`` (environment or Prefect
  profile) and refuses to run against Prefect's throw-away ephemeral API: a deployment
  registered there would vanish with the process.
- Secret values are read from the environment and written to a Secret block; they are never
  printed, logged or put in an event.

Example::

    tidegate deployments register --work-pool tidegate-local
    tidegate worker --pool tidegate-local
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from tasks.errors import CredentialsError, SpecError, TidegateError

DEFAULT_BLOCK = "tidegate-oss"
AUTOMATION_FILE = Path(__file__).resolve().parent.parent / "automations" / "notify-on-failed-gate.yaml"


class PrefectApiError(TidegateError, ConnectionError):
    """The Prefect API is not configured, unreachable, or refused a request."""


# -- the Prefect API ---------------------------------------------------------------------------
def api_url() -> str:
    """The configured PREFECT_API_URL, or a PrefectApiError that says how to set one."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PrefectApiError(
            "PREFECT_API_URL is not set: deployments, workers and gates need a Prefect server",
            hint="start one with `prefect server start` and run "
                 "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`")
    return str(url)


@contextlib.contextmanager
def client():
    """A synchronous Prefect client for the configured server, checked to answer."""
    from prefect import get_client

    url = api_url()
    with get_client(sync_client=True) as c:
        exc = c.api_healthcheck()
        if exc is not None:
            raise PrefectApiError(f"Prefect API {url} is unreachable ({type(exc).__name__})",
                                  hint="is `prefect server start` running?")
        yield c


def ensure_work_pool(c, name: str, pool_type: str = "process", base_job_template: dict | None = None):
    """The work pool ``name``, created with ``pool_type`` when missing."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        return c.read_work_pool(name)
    except ObjectNotFound:
        pass
    create = WorkPoolCreate(name=name, type=pool_type, **({"base_job_template": base_job_template}
                                                           if base_job_template else {}))
    c.create_work_pool(create)
    return c.read_work_pool(name)


def online_workers(c, pool: str) -> list[str]:
    from prefect.client.schemas.objects import WorkerStatus

    try:
        workers = c.read_workers_for_work_pool(pool)
    except Exception:  # noqa: BLE001 - a missing pool has no workers
        return []
    return [w.name for w in workers if w.status == WorkerStatus.ONLINE]


# -- deployments register ----------------------------------------------------------------------
def register_deployments(settings=None) -> list[tuple[str, str, str]]:
    """Create or update nightly, manual and release-gate; return (name, id, schedule) rows."""
    from flows.deployments import FLOW_NAME, DeploymentSettings, build_deployments

    s = settings or DeploymentSettings()
    template = None
    if s.pool_type == "kubernetes":
        import json

        from flows.deployments import K8S_JOB_TEMPLATE

        template = json.loads(K8S_JOB_TEMPLATE.read_text())
    with client() as c:
        pool = ensure_work_pool(c, s.work_pool, s.pool_type, base_job_template=template)
        if pool.type != s.pool_type:
            raise SpecError(f"deployments: work pool {s.work_pool!r} exists with type {pool.type}, not {s.pool_type}",
                            hint="name another --work-pool, or delete that pool first")
    rows = []
    from flows import clusterlock
    from tasks.errors import TidegateError
    from tasks.spec import load_spec

    try:  # one validation at a time against the nightly spec's cluster
        name = clusterlock.ensure_limit(load_spec(s.spec_file(s.nightly_spec)))
        rows.append((f"global concurrency limit {name}", "1 slot", "-"))
    except TidegateError as exc:
        print(f"tidegate: warning: no cluster concurrency limit: {exc.one_line()}", file=sys.stderr)
    for d in build_deployments(s):
        dep_id = d.apply(work_pool_name=s.work_pool)
        sched = ", ".join(f"cron '{sc.schedule.cron}' {sc.schedule.timezone}" for sc in d.schedules or []) or "-"
        rows.append((f"{FLOW_NAME}/{d.name}", str(dep_id), sched))
    return rows


def cmd_deployments(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.deployments import DeploymentSettings

    overrides = {k: v for k, v in dict(work_pool=args.work_pool, nightly_spec=args.spec,
                                       nightly_cron=args.cron, nightly_timezone=args.timezone,
                                       release_spec=args.release_spec).items() if v is not None}
    if args.paused:
        overrides["nightly_paused"] = True
    if args.type:
        overrides["pool_type"] = args.type
    if args.job_var:
        overrides["job_variables"] = _job_variables(args.job_var)
    try:
        settings = DeploymentSettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(f"deployments: {'.'.join(map(str, err['loc']))}: "
                        f"{err['msg'].removeprefix('Value error, ')}") from None
    rows = register_deployments(settings)
    print(f"tidegate: registered {len(rows)} deployments on work pool {settings.work_pool!r} "
          f"at {api_url()}")
    for name, dep_id, sched in rows:
        print(f"  {name:<45} {dep_id}  schedule: {sched}")
    print(f"start a worker with `tidegate worker --pool {settings.work_pool}`")
    return 0


def _job_variables(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses (objects, numbers), else a string."""
    import json

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--job-var {item!r}: expected KEY=VALUE, e.g. image=registry/tidegate:1.0")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


# -- blocks create -----------------------------------------------------------------------------
def create_oss_secret_block(name: str, key_id_env: str, key_secret_env: str, *, overwrite: bool) -> None:
    """Save ``{"access_key_id", "access_key_secret"}`` from the environment as Secret block
    ``name`` (the shape ``OssCredentials.resolve`` reads). Never echoes a value."""
    from prefect.blocks.system import Secret

    missing = [n for n in (key_id_env, key_secret_env) if not os.environ.get(n)]
    if missing:
        raise CredentialsError(f"blocks create: environment variable(s) {', '.join(missing)} not set",
                               hint="export them, or name others with --access-key-id-env/--access-key-secret-env")
    api_url()
    with client():
        pass
    value = {"access_key_id": os.environ[key_id_env], "access_key_secret": os.environ[key_secret_env]}
    try:
        Secret(value=value).save(name, overwrite=overwrite)
    except ValueError as exc:
        if "already" in str(exc).lower():
            raise PrefectApiError(f"blocks create: Secret block {name!r} already exists",
                                  hint="pass --overwrite to replace it") from None
        raise PrefectApiError(f"blocks create: could not save Secret block {name!r} "
                              f"({type(exc).__name__})") from None


def cmd_blocks(args: argparse.Namespace) -> int:
    from tasks.spec import OssCredentials, load_spec

    creds = load_spec(args.spec, args.set or []).storage.oss.credentials if args.spec else OssCredentials()
    key_id_env = args.access_key_id_env or creds.access_key_id_env
    key_secret_env = args.access_key_secret_env or creds.access_key_secret_env
    name = args.name or creds.secret_block or DEFAULT_BLOCK
    create_oss_secret_block(name, key_id_env, key_secret_env, overwrite=args.overwrite)
    print(f"tidegate: saved Prefect Secret block {name!r} from ${key_id_env} and ${key_secret_env} "
          f"(values not shown); use it with storage.oss.credentials.secret_block: {name}")
    return 0


# -- automations create ------------------------------------------------------------------------
def create_automation(notify_block: str, path: Path = AUTOMATION_FILE) -> str:
    """Create (or replace, by name) the automation in ``path``, sending notifications through
    the block ``<block-type-slug>/<name>``, e.g. ``slack-webhook/ops``. Returns its id."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    slug, sep, block_name = notify_block.partition("/")
    if not sep or not slug or not block_name:
        raise SpecError(f"--notify-block {notify_block!r}: expected <block-type-slug>/<name>, "
                        f"e.g. slack-webhook/ops-alerts")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"automation {path}: cannot read: {exc}") from None
    with client() as c:
        try:
            block = c.read_block_document_by_name(block_name, slug, include_secrets=False)
        except ObjectNotFound:
            raise PrefectApiError(f"no {slug} block named {block_name!r}",
                                  hint="create it in the UI (Blocks) or with Python first") from None
        for action in data.get("actions", []):
            if action.get("type") == "send-notification":
                action["block_document_id"] = str(block.id)
        automation = AutomationCore.model_validate(data)
        for old in c.read_automations_by_name(automation.name):
            c.delete_automation(old.id)
        return str(c.create_automation(automation))


def cmd_automations(args: argparse.Namespace) -> int:
    auto_id = create_automation(args.notify_block, Path(args.file))
    print(f"tidegate: automation from {args.file} created ({auto_id}); notifications go to {args.notify_block}")
    return 0


# -- worker ------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    """Ensure the process pool exists, then become ``prefect worker start`` (signals included)."""
    with client() as c:
        ensure_work_pool(c, args.pool, "process")
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", args.pool, "--type", "process"]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    if args.name:
        argv += ["--name", args.name]
    print(f"tidegate: starting a process worker for pool {args.pool!r} at {api_url()}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


# -- argparse ----------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    dp = sub.add_parser("deployments", help="Prefect deployments of the flow (nightly, manual, release-gate)")
    dsub = dp.add_subparsers(dest="action", required=True)
    r = dsub.add_parser("register", help="create or update the deployments on PREFECT_API_URL")
    r.add_argument("--work-pool", help="work pool (created if missing, of --type; "
                                       "default $TIDEGATE_WORK_POOL or tidegate-local)")
    r.add_argument("--spec", help="nightly spec: default parameters of nightly and manual "
                                  "(default $TIDEGATE_NIGHTLY_SPEC or examples/qwen-chat.local.yaml)")
    r.add_argument("--cron", help="nightly cron (default $TIDEGATE_NIGHTLY_CRON or '0 2 * * *')")
    r.add_argument("--timezone", help="IANA time zone of the cron (default $TIDEGATE_NIGHTLY_TIMEZONE or UTC)")
    r.add_argument("--release-spec", help="default spec_path of release-gate")
    r.add_argument("--paused", action="store_true", help="register the nightly schedule paused")
    r.add_argument("--type", choices=("process", "kubernetes"),
                   help="type of the work pool when it is created (default process); kubernetes: "
                        "from manifests/prefect-k8s-job-template.json, each flow run a Job")
    r.add_argument("--job-var", action="append", default=[], metavar="KEY=VALUE",
                   help="job variable of the deployments (JSON values allowed), e.g. image=..., "
                        "'pod_labels={\"tidegate.dev/local-exec\": \"true\"}'")
    r.set_defaults(func=cmd_deployments)

    bp = sub.add_parser("blocks", help="Prefect blocks tidegate uses")
    bsub = bp.add_subparsers(dest="action", required=True)
    c = bsub.add_parser("create", help="Secret block with the OSS keys from the environment (never echoed)")
    c.add_argument("--spec", help="take the env variable names (and block name) from this spec")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    c.add_argument("--name", help=f"block name (default the spec's secret_block or {DEFAULT_BLOCK})")
    c.add_argument("--access-key-id-env", help="env variable holding the AccessKey ID")
    c.add_argument("--access-key-secret-env", help="env variable holding the AccessKey secret")
    c.add_argument("--overwrite", action="store_true", help="replace an existing block")
    c.set_defaults(func=cmd_blocks)

    ap = sub.add_parser("automations", help="Prefect automations (notification on a failed run)")
    asub = ap.add_subparsers(dest="action", required=True)
    a = asub.add_parser("create", help="create the automation of automations/notify-on-failed-gate.yaml")
    a.add_argument("--notify-block", required=True, metavar="SLUG/NAME",
                   help="notification block, e.g. slack-webhook/ops-alerts")
    a.add_argument("--file", default=str(AUTOMATION_FILE), help=argparse.SUPPRESS)
    a.set_defaults(func=cmd_automations)

    w = sub.add_parser("worker", help="start a Prefect process worker (wraps `prefect worker start`)")
    w.add_argument("--pool", default=os.environ.get("TIDEGATE_WORK_POOL", "tidegate-local"),
                   help="work pool (created as a process pool if missing; default tidegate-local)")
    w.add_argument("--limit", type=int, help="at most this many concurrent flow runs")
    w.add_argument("--name", help="worker name")
    w.set_defaults(func=cmd_worker)
