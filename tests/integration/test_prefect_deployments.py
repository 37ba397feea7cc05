"""The deployments on a real Prefect server, executed by a real process worker.

A module-scoped ``prefect server start`` (own PREFECT_HOME, free port, analytics off) and a
``tidegate worker``; ``tidegate deployments register`` puts nightly / manual / release-gate on
it, and everything is read back through the API. The release gate is driven through
``tidegate gate`` (and once through ``prefect deployment run --watch``) exactly as CI would:

- a spec whose cluster cannot be reached (bad kubeconfig) ends Failed -> exit 2, JUnit from the
  run's report, the ``tidegate.run.failed`` event and the notification automation fire;
- a stage that runs and fails (smoke against a closed port) ends Failed -> exit 1;
- a passing run without a cluster (stages: teardown only; nothing created) ends Completed -> 0,
  with the report artifact carrying the verdict;
- a passing run on the test bed (stages prepare, teardown in a namespace of its own);
- a deployment with no worker gives a clear message within --start-timeout.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIDEGATE = [sys.executable, "-m", "flows.cli"]
POOL = "tidegate-it"
FLOW = "elastic-rollout-validation"
STARTUP_LIMIT_S = 120

pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class PrefectServer:
    def __init__(self, url: str, env: dict[str, str], home: Path, startup_s: float):
        self.url, self.env, self.home, self.startup_s = url, env, home, startup_s
        self.reports = home / "reports"

    def cli(self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None):
        return subprocess.run([*TIDEGATE, *args], cwd=ROOT, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``prefect server start`` on a free port with its own PREFECT_HOME (bounded start)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
           "PREFECT_UI_API_URL": url, "TIDEGATE_REPORTS_DIR": str(home / "reports"),
           "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "INFO",
           "PYTHONUNBUFFERED": "1"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    t0 = time.monotonic()
    import httpx

    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}: "
                            f"{(home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > STARTUP_LIMIT_S:
                pytest.fail(f"prefect server not healthy within {STARTUP_LIMIT_S}s")
            time.sleep(0.5)
        startup_s = time.monotonic() - t0
        print(f"\nprefect server {url} healthy after {startup_s:.1f}s")
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
            yield PrefectServer(url, env, home, startup_s)
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def registered(prefect_server):
    """`tidegate deployments register` with a configured cron and time zone."""
    t0 = time.monotonic()
    r = prefect_server.cli("deployments", "register", "--work-pool", POOL,
                           extra_env={"TIDEGATE_NIGHTLY_CRON": "15 3 * * *",
                                      "TIDEGATE_NIGHTLY_TIMEZONE": "Europe/Berlin"})
    assert r.returncode == 0, r.stderr + r.stdout
    print(f"registered in {time.monotonic() - t0:.1f}s\n{r.stdout}")
    return r.stdout


@pytest.fixture(scope="module")
def worker(prefect_server, registered):
    """`tidegate worker --pool tidegate-it`, waited for until the server sees it online."""
    from prefect import get_client

    from flows.prefect_admin import online_workers

    log = open(prefect_server.home / "worker.log", "w")
    proc = subprocess.Popen([*TIDEGATE, "worker", "--pool", POOL, "--name", "it-worker"], cwd=ROOT,
                            env=prefect_server.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    try:
        with get_client(sync_client=True) as c:
            while not online_workers(c, POOL):
                if proc.poll() is not None or time.monotonic() - t0 > 90:
                    pytest.fail("worker did not come online: "
                                f"{(prefect_server.home / 'worker.log').read_text()[-2000:]}")
                time.sleep(0.5)
        print(f"worker online after {time.monotonic() - t0:.1f}s")
        yield proc
    finally:
        _stop(proc)
        log.close()


def _read(name: str):
    from prefect import get_client

    with get_client(sync_client=True) as c:
        return c.read_deployment_by_name(f"{FLOW}/{name}")


def _flow_run(flow_run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as c:
        return c.read_flow_run(uuid.UUID(flow_run_id))


def _run_ids(out: str) -> str:
    line = next(ln for ln in out.splitlines() if "triggered" in ln)
    return line.split("(")[1].split(")")[0]


def _bad_kubeconfig_spec(tmp: Path) -> Path:
    bad = tmp / "bad-kubeconfig"
    bad.write_text("not: a kubeconfig\n")
    text = (ROOT / "examples" / "qwen-chat.local.yaml").read_text()
    spec = tmp / "unreachable.yaml"
    spec.write_text(text.replace("cluster:\n", f"cluster:\n  kubeconfig: {bad}\n", 1))
    return spec


# -- registration, read back through the API ----------------------------------------------------
def test_deployments_registered_with_schedule_and_forms(registered):
    from prefect import get_client

    nightly, manual, gate = _read("nightly"), _read("manual"), _read("release-gate")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == \
        [("15 3 * * *", "Europe/Berlin", True)]
    assert manual.schedules == [] and gate.schedules == []
    for d in (nightly, manual, gate):
        assert d.work_pool_name == POOL and d.enforce_parameter_schema
        # a pull step enters the project: nothing is copied to a temporary workspace
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert nightly.parameters["spec"]["name"] == "qwen-chat-local"
    assert nightly.parameters == manual.parameters
    schema = manual.parameter_openapi_schema
    assert schema["properties"]["spec"]["$ref"] == "#/definitions/RolloutSpec"
    creds = schema["definitions"]["OssCredentials"]["properties"]
    assert creds["access_key_secret_env"]["title"] == "AccessKey secret variable"
    assert set(gate.parameter_openapi_schema["properties"]) >= {"image", "model_source", "spec_path", "spec"}
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as c:
        assert c.read_work_pool(POOL).type == "process"
        while True:
            scheduled = [r for r in c.read_flow_runs(limit=100) if r.deployment_id == nightly.id]
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert scheduled, "the scheduler created no nightly runs"
    assert all(r.expected_start_time.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin")).hour == 3
               for r in scheduled)


def test_deployment_register_again_updates_in_place(prefect_server, registered):
    before = {n: _read(n).id for n in ("nightly", "manual", "release-gate")}
    r = prefect_server.cli("deployments", "register", "--work-pool", POOL,
                           extra_env={"TIDEGATE_NIGHTLY_CRON": "15 3 * * *",
                                      "TIDEGATE_NIGHTLY_TIMEZONE": "Europe/Berlin"})
    assert r.returncode == 0, r.stderr
    assert {n: _read(n).id for n in before} == before
    assert len(_read("nightly").schedules) == 1


def test_ui_form_rejects_invalid_parameters_before_the_run(prefect_server, registered):
    """The server validates a form/API submission against the schema: no run is created."""
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    manual = _read("manual")
    good = manual.parameters["spec"]
    cases = [
        {**good, "service": {**good["service"], "gpus": 1000}},      # above the field's maximum
        {**good, "profile": "production"},                           # not one of the choices
        {**good, "service": {**good["service"], "api_key": "x"}},     # unknown field
    ]
    with get_client(sync_client=True) as c:
        def manual_runs() -> int:
            return len([r for r in c.read_flow_runs(limit=200) if r.deployment_id == manual.id])

        before = manual_runs()
        for spec in cases:
            with pytest.raises(PrefectHTTPStatusError) as info:
                c.create_flow_run_from_deployment(manual.id, parameters={"spec": spec})
            assert info.value.response.status_code in (409, 422)
        assert manual_runs() == before
    r = prefect_server.cli("gate", "--deployment", "manual", "--param",
                           "spec=" + json.dumps(cases[0]), "--timeout", "30", timeout=120)
    assert r.returncode == 2
    assert "refused by the deployment's schema" in r.stdout + r.stderr and "gpus" in r.stdout + r.stderr


# -- release gate through a real worker ---------------------------------------------------------
class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def notification_hook(prefect_server):
    """A local webhook and the example automation sending to it through a notification block."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(
        name="tidegate-it", url=f"http://127.0.0.1:{httpd.server_address[1]}/hook",
        json_data={"subject": "{{subject}}", "body": "{{body}}"}).save("tidegate-it-hook", overwrite=True)
    r = prefect_server.cli("automations", "create", "--notify-block", "custom-webhook/tidegate-it-hook")
    assert r.returncode == 0, r.stderr + r.stdout
    yield _Hook.received
    httpd.shutdown()


@pytest.fixture(scope="module")
def failed_gate(prefect_server, worker, notification_hook, tmp_path_factory):
    """One release-gate run against an unreachable cluster, through `tidegate gate`."""
    tmp = tmp_path_factory.mktemp("gate-failed")
    spec = _bad_kubeconfig_spec(tmp)
    junit = tmp / "junit.xml"
    t0 = time.monotonic()
    r = prefect_server.cli("gate", "--deployment", "release-gate", "--param", f"spec_path={spec}",
                           "--param", 'stages=["prepare","gate","teardown"]', "--junit", str(junit),
                           "--timeout", "240", "--poll", "0.5")
    seconds = time.monotonic() - t0
    print(f"failing gate: exit {r.returncode} after {seconds:.1f}s\n{r.stdout}{r.stderr}")
    return r, junit, seconds


def test_release_gate_unreachable_cluster_ends_failed_exit_2(failed_gate):
    r, junit, _ = failed_gate
    assert r.returncode == 2, r.stdout + r.stderr
    assert "ended Failed" in r.stdout and "ClusterError" in r.stdout
    run = _flow_run(_run_ids(r.stderr))
    assert run.state.is_failed()
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("name").startswith("tidegate.gate-release-gate-")  # the run's own report
    prepare = next(c for c in suite.iter("testcase") if c.get("name") == "prepare")
    assert "cannot load kubeconfig" in prepare.find("error").get("message")


def test_release_gate_failure_emits_event_and_notifies(failed_gate, notification_hook):
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    r, _, _ = failed_gate
    run = _flow_run(_run_ids(r.stderr))
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as c:
        while True:
            events = c.read_events(filter=EventFilter(event=EventNameFilter(name=["tidegate.run.failed"])),
                                   limit=50).events
            mine = [e for e in events if any(rr.id == f"prefect.flow-run.{run.id}" for rr in e.related)]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert mine, "no tidegate.run.failed event for the failed run"
    event = mine[0]
    assert event.resource["tidegate.outcome"] == "error"
    assert event.payload["exit_code"] == 2 and event.payload["run_id"] == run.parameters["run_id"]
    while not any(run.parameters["run_id"] in m.get("subject", "") for m in notification_hook):
        assert time.monotonic() < deadline, f"no notification within 60s: {notification_hook}"
        time.sleep(1)
    note = next(m for m in notification_hook if run.parameters["run_id"] in m["subject"])
    assert note["subject"].startswith("tidegate: error in run ")
    assert "ClusterError" in note["body"] and "CI exit code 2" in note["body"]


def test_release_gate_failing_stage_exits_1(prefect_server, worker, tmp_path):
    """A stage that ran and failed (smoke against a closed port) is a verdict: exit 1."""
    junit = tmp_path / "junit.xml"
    r = prefect_server.cli("gate", "--deployment", "release-gate",
                           "--param", "overrides=" + json.dumps([f"ingress.url=http://127.0.0.1:{_free_port()}"]),
                           "--param", 'stages=["smoke","gate"]', "--junit", str(junit), "--timeout", "240",
                           "--poll", "0.5")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("tidegate: FAIL ") and "StageFailed" in r.stdout
    smoke = next(c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "smoke")
    assert "unreachable" in smoke.find("failure").get("message")


def test_deployment_run_watch_exits_nonzero_on_failure(prefect_server, worker, tmp_path):
    spec = _bad_kubeconfig_spec(tmp_path)
    r = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", f"{FLOW}/release-gate",
                        "--param", f"spec_path={spec}", "--params", '{"stages": ["prepare"]}',
                        "--watch", "--watch-timeout", "240"],
                       cwd=ROOT, env=prefect_server.env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Failed" in r.stdout + r.stderr


SMOKE_RULES = 'slo=[{rule: smoke.ok, op: "==", threshold: true}, {rule: smoke.ttft_ms, op: "<=", threshold: 5000}]'


@pytest.fixture(scope="module")
def passing_gate(prefect_server, worker, testbed, tmp_path_factory):
    """One release-gate run that passes on evidence: the service deployed on the test bed answers
    the smoke checks, and the gate judges them (a run that judged nothing is never a pass)."""
    junit = tmp_path_factory.mktemp("gate-passing") / "junit.xml"
    t0 = time.monotonic()
    r = prefect_server.cli("gate", "--deployment", f"{FLOW}/release-gate",
                           "--param", "image=registry.example.com/vllm-openai:v0.7.0",
                           "--param", "overrides=" + json.dumps([SMOKE_RULES]),
                           "--param", 'stages=["prepare","deploy","smoke","gate","teardown"]', "--junit", str(junit),
                           "--timeout", "400", "--poll", "0.5")
    print(f"passing gate: exit {r.returncode} after {time.monotonic() - t0:.1f}s")
    assert r.returncode == 0, r.stdout + r.stderr
    return r, junit, _flow_run(_run_ids(r.stderr))


def test_release_gate_passing_run_completes_with_artifact(prefect_server, passing_gate):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    r, junit, run = passing_gate
    assert r.stdout.startswith("tidegate: PASS ")
    assert run.state.is_completed()
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    report = json.loads((prefect_server.reports / run.parameters["run_id"] / "report.json").read_text())
    assert report["verdict"] == "pass"
    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tidegate-qwen-chat-local"])))
    mine = [a for a in arts if a.flow_run_id == run.id]
    assert mine and "**PASS**" in mine[0].data and run.parameters["run_id"] in mine[0].data


def test_release_gate_without_worker_gives_clear_message(prefect_server, registered):
    from prefect import get_client

    from flows.deployments import release_gate
    from flows.prefect_admin import ensure_work_pool

    with get_client(sync_client=True) as c:
        ensure_work_pool(c, "tidegate-idle-pool")
    release_gate.to_deployment(name="release-gate-idle", parameters={"spec_path": "examples/qwen-chat.local.yaml"}) \
        .apply(work_pool_name="tidegate-idle-pool")
    t0 = time.monotonic()
    r = prefect_server.cli("gate", "--deployment", "release-gate-idle", "--start-timeout", "6",
                           "--timeout", "60", "--junit", str(prefect_server.home / "idle.xml"), timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 2
    assert "no worker is online for work pool 'tidegate-idle-pool'" in r.stderr
    assert "no worker picked the run up within 6s" in r.stdout
    assert took < 60
    assert _flow_run(_run_ids(r.stderr)).state.is_cancelled()
    error = ET.parse(prefect_server.home / "idle.xml").getroot().find("testsuite/testcase/error")
    assert error.get("type") == "NOT_STARTED"


def test_release_gate_refuses_to_judge_nothing(prefect_server, worker, tmp_path):
    """A release gate without the gate stage, or with a spec without rules, would pass without
    evidence: refused before anything runs (exit 2, the field named)."""
    for params, field in ((['--param', 'stages=["prepare","teardown"]'], "stages: a release gate must run the gate"),
                          (["--param", "overrides=" + json.dumps(["slo=[]"])], "slo: a release gate needs")):
        r = prefect_server.cli("gate", "--deployment", "release-gate", *params, "--timeout", "120", "--poll", "0.5")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "SpecError" in r.stdout and field in r.stdout, r.stdout


@pytest.mark.integration
def test_release_gate_on_testbed_prepare_and_teardown(prefect_server, worker, testbed, kube, tmp_path):
    """A real run on the test bed without load: prepare applies the run's objects, teardown removes
    them; the gate has nothing to judge, so the run is inconclusive (exit 3), never a pass."""
    ns = f"tg-prefect-{uuid.uuid4().hex[:6]}"
    junit = tmp_path / "junit.xml"
    r = prefect_server.cli("gate", "--deployment", "release-gate",
                           "--param", "overrides=" + json.dumps([f"cluster.namespace={ns}",
                                                                  "cluster.create_namespace=true"]),
                           "--param", 'stages=["prepare","gate","teardown"]', "--junit", str(junit),
                           "--timeout", "300", "--poll", "0.5")
    assert r.returncode == 3, r.stdout + r.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["prepare"].find("error") is None and cases["teardown"].find("error") is None
    skipped = [c for c in cases.values() if c.get("classname") == "tidegate.gate" and c.find("skipped") is not None]
    assert skipped and "inconclusive: no data" in skipped[0].find("skipped").get("message")
    run_id = _flow_run(_run_ids(r.stderr)).parameters["run_id"]
    assert kube.list("v1", "PersistentVolumeClaim", ns, label_selector=f"tidegate.dev/run-id={run_id}") == []


# -- Kubernetes work pool and Secret blocks ----------------------------------------------------
def test_prefect_k8s_work_pool_accepts_the_job_template(prefect_server):
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((ROOT / "manifests" / "prefect-k8s-job-template.json").read_text())
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name="tidegate-k8s-it", type="kubernetes", base_job_template=template))
        pool = c.read_work_pool("tidegate-k8s-it")
    props = pool.base_job_template["variables"]["properties"]
    assert props["service_account_name"]["default"] == "tidegate"
    assert pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "serviceAccountName"] == "{{ service_account_name }}"


def test_prefect_secret_block_from_env_never_echoed(prefect_server):
    from tasks.spec import OssCredentials

    env = {"TG_IT_KEY_ID": "LTAI5tIntegrationKeyId", "TG_IT_KEY_SECRET": "integration-secret-value-42"}
    args = ["blocks", "create", "--name", "tidegate-oss-it", "--access-key-id-env", "TG_IT_KEY_ID",
            "--access-key-secret-env", "TG_IT_KEY_SECRET"]
    first = prefect_server.cli(*args, extra_env=env)
    again = prefect_server.cli(*args, extra_env=env)
    forced = prefect_server.cli(*args, "--overwrite", extra_env=env)
    assert (first.returncode, again.returncode, forced.returncode) == (0, 2, 0), first.stderr + again.stderr
    assert "already exists" in again.stderr
    for r in (first, again, forced):
        assert not any(v in r.stdout + r.stderr for v in env.values())
    key_id, secret = OssCredentials(secret_block="tidegate-oss-it").resolve()
    assert (key_id.get_secret_value(), secret.get_secret_value()) == tuple(env.values())


# -- the UI in a real browser ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Selenium (chromium-driver)."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    b.set_page_load_timeout(60)
    yield b
    b.quit()


def _page_text_with(browser, url: str, needles: list[str], timeout_s: float = 60) -> str:
    from selenium.webdriver.common.by import By

    browser.get(url)
    deadline = time.monotonic() + timeout_s
    while True:
        text = browser.find_element(By.TAG_NAME, "body").text
        if all(n in text for n in needles) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_ui_flow_run_page_shows_state_and_report_artifact(prefect_server, passing_gate, browser, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _, _, run = passing_gate
    ui = prefect_server.url.removesuffix("/api")
    text = _page_text_with(browser, f"{ui}/runs/flow-run/{run.id}", [run.name, "Completed", "release-gate"])
    shot = tmp_path / "flow-run.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot {shot}")
    assert run.name in text and "Completed" in text, text[:2000]
    assert "release-gate" in text
    with get_client(sync_client=True) as c:
        artifact = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))[0]
    from selenium.webdriver.common.by import By

    tabs = [e for e in browser.find_elements(By.CSS_SELECTOR, "li.p-tab") if e.text.strip() == "Artifacts"]
    assert tabs, "no Artifacts tab on the flow run page"
    tabs[0].click()
    deadline = time.monotonic() + 30
    while "tidegate-qwen-chat-local" not in (text := browser.find_element(By.TAG_NAME, "body").text):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    browser.save_screenshot(str(tmp_path / "flow-run-artifacts.png"))
    assert "tidegate-qwen-chat-local" in text, text[:2000]
    text = _page_text_with(browser, f"{ui}/artifacts/artifact/{artifact.id}", ["PASS", run.parameters["run_id"]])
    browser.save_screenshot(str(tmp_path / "report-artifact.png"))
    assert "PASS" in text and run.parameters["run_id"] in text, text[:2000]
    assert shot.stat().st_size > 10_000


CLUSTER_LOCK_SCRIPT = r'''
import sys, threading, time
from flows import clusterlock
from tasks.errors import ClusterError
from tasks.spec import load_spec

spec = load_spec("examples/qwen-chat.local.yaml", [f"cluster.kubeconfig={sys.argv[1]}"])
name = clusterlock.ensure_limit(spec)
spans = []

def run(tag):
    with clusterlock.hold(spec, timeout_s=60):
        t0 = time.monotonic()
        time.sleep(1.5)
        spans.append((tag, t0, time.monotonic()))

threads = [threading.Thread(target=run, args=(t,)) for t in ("first", "second")]
for t in threads:
    t.start()
time.sleep(0.5)
try:
    with clusterlock.hold(spec, wait=False):
        print("NOWAIT acquired")
except ClusterError as exc:
    print("NOWAIT refused:", exc.one_line())
for t in threads:
    t.join(90)
(a, a0, a1), (b, b0, b1) = sorted(spans, key=lambda s: s[1])
print("LIMIT", name)
print("OVERLAP", max(0.0, min(a1, b1) - max(a0, b0)))
'''


def test_two_runs_against_one_cluster_run_one_after_the_other(prefect_server, tmp_path):
    """The cluster's global concurrency limit (one slot, created at registration): two runs holding
    it at once are serialised (enqueue); one that asked not to wait is refused naming the cluster."""
    kubeconfig = tmp_path / "kc.yaml"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:6443'}\n"
        "users:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n"
        "current-context: c\n")
    r = subprocess.run([sys.executable, "-c", CLUSTER_LOCK_SCRIPT, str(kubeconfig)], cwd=ROOT,
                       env=prefect_server.env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
    assert lines["LIMIT"].startswith("tidegate-cluster-")
    assert float(lines["OVERLAP"]) == 0.0, r.stdout
    assert lines["NOWAIT"].startswith("refused: another tidegate run holds cluster https://127.0.0.1:6443"), r.stdout


def test_two_deployment_runs_against_one_cluster_run_one_after_the_other(prefect_server, worker, testbed, tmp_path):
    """Two release-gate flow runs created together through the API, both against the test bed's
    cluster (a 12 s spike each, served by emulators in this process): the worker starts both at
    once, the cluster's concurrency limit makes the second wait, and their spike tasks do not overlap."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tests.integration.test_load import HOST, ServedBed

    served = ServedBed(replicas=1)
    served.start()
    overrides = [f"cluster.kubeconfig={testbed.kubeconfig}", f"ingress.url={served.url}", f"ingress.host={HOST}",
                 "load.arrival=poisson", "load.baseline_rps=4", "load.spike_rps=4", "load.baseline_s=0",
                 "load.spike_s=12", "load.hold_s=0", "load.cooldown_s=0", "load.ramp_s=0", "load.max_tokens=4",
                 "results.publish=false", 'slo=[{rule: load.error_rate, op: "<=", threshold: 0.01}]']
    try:
        with get_client(sync_client=True) as c:
            dep = c.read_deployment_by_name(f"{FLOW}/release-gate")
            runs = [c.create_flow_run_from_deployment(dep.id, parameters={"overrides": overrides,
                                                                          "stages": ["spike", "gate"]})
                    for _ in range(2)]
            deadline = time.monotonic() + 240
            while True:
                states = [c.read_flow_run(r.id).state for r in runs]
                if all(s is not None and s.is_final() for s in states) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert all(s.is_completed() for s in states), [(s.type, s.message) for s in states]
            spans = []
            for r in runs:
                tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id])))
                spike = next(t for t in tasks if t.name.startswith("spike"))
                spans.append((spike.start_time, spike.end_time))
            started = sorted(c.read_flow_run(r.id).start_time for r in runs)
    finally:
        served.stop()
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0, f"spike tasks overlap: {spans}"
    # both flow runs started together: the second's spike waited for the first's
    assert (started[1] - started[0]).total_seconds() < (a1 - a0).total_seconds(), (started, spans)
