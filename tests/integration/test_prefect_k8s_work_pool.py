"""Issue 24: the Prefect Kubernetes work pool run for real on the test bed. ``tidegate deployments
register --type kubernetes`` creates the pool from manifests/prefect-k8s-job-template.json, a
``prefect worker start --type kubernetes`` turns a deployment run into a Job, the test bed's pod
runner runs the Job's pod (``prefect flow-run execute``) as a local process, the flow completes
and its report lands in the results store (the test bed's OSS)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.integration.test_prefect_deployments import _stop, prefect_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RUN_LIMIT_S = 300


@pytest.fixture
def results(testbed):
    import oss2

    from testbed.objectstore import load_keys, oss_endpoint

    key_id, secret = load_keys(testbed.state_dir)
    endpoint = oss_endpoint(testbed.ports)
    bucket = oss2.Bucket(oss2.Auth(key_id, secret), endpoint, "tidegate-results", enable_crc=False)
    try:
        bucket.get_bucket_info()
    except oss2.exceptions.NoSuchBucket:
        bucket.create_bucket()
    prefix = f"test-k8s-pool-{uuid.uuid4().hex[:8]}"
    yield {"endpoint": endpoint, "url": f"oss://tidegate-results/{prefix}", "keys": (key_id, secret)}
    keys = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix=prefix + "/")]
    for i in range(0, len(keys), 500):
        bucket.batch_delete_objects(keys[i:i + 500])


def test_prefect_k8s_work_pool_runs_a_flow_as_a_job_on_the_test_bed(prefect_server, testbed, kube, results,  # noqa: F811
                                                                     tmp_path):
    from prefect import get_client

    spec = yaml.safe_load((ROOT / "examples" / "qwen-chat.local.yaml").read_text())
    spec["model"]["source"] = str(ROOT / "examples" / "models" / "tiny-qwen")
    spec["storage"]["oss"]["endpoint"] = results["endpoint"]
    spec["ingress"]["url"] = f"http://127.0.0.1:{testbed.ports.gateway}"
    spec["cluster"]["kubeconfig"] = str(testbed.kubeconfig)
    spec["results"] = {"store": results["url"], "endpoint": results["endpoint"]}
    spec["stages"] = ["prepare", "deploy", "smoke", "spike", "gate", "teardown"]
    spec["slo"] = [{"rule": "load.error_rate", "op": "<=", "threshold": 0.5}]
    spec["load"].update({"baseline_rps": 1, "spike_rps": 2, "ramp_s": 0, "baseline_s": 3, "spike_s": 8,
                         "hold_s": 0, "cooldown_s": 3})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {"TIDEGATE_REPORTS_DIR": str(tmp_path / "pod-reports"), "TIDEGATE_TESTBED_DIR": str(testbed.state_dir),
           "PREFECT_LOGGING_EXTRA_LOGGERS": "tidegate"}
    pool = f"tidegate-k8s-{uuid.uuid4().hex[:6]}"
    r = prefect_server.cli("deployments", "register", "--work-pool", pool, "--type", "kubernetes",
                           "--spec", str(spec_file), "--release-spec", str(spec_file), "--paused",
                           "--job-var", "image=tidegate/tidegate:latest",
                           "--job-var", 'pod_labels={"tidegate.dev/local-exec": "true"}',
                           "--job-var", "service_account_name=default", "--job-var", f"env={json.dumps(env)}")
    assert r.returncode == 0, r.stdout + r.stderr
    with get_client(sync_client=True) as c:
        wp = c.read_work_pool(pool)
        assert wp.type == "kubernetes"
        assert wp.base_job_template["job_configuration"]["job_manifest"]["spec"]["completions"] == 1
        dep = c.read_deployment_by_name("elastic-rollout-validation/manual")
    wlog = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                               "kubernetes", "--name", f"{pool}-w"], cwd=ROOT, stdout=wlog, stderr=subprocess.STDOUT,
                              env={**prefect_server.env, "KUBECONFIG": str(testbed.kubeconfig)}, start_new_session=True)
    try:
        with get_client(sync_client=True) as c:
            run = c.create_flow_run_from_deployment(dep.id)
            until = time.monotonic() + RUN_LIMIT_S
            while time.monotonic() < until:
                state = c.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    break
                time.sleep(2)
            state = c.read_flow_run(run.id).state
        until = time.monotonic() + 30  # the flow run is final a moment before its process exits
        while True:
            pods = kube.list("v1", "Pod", "default", label_selector=f"prefect.io/flow-run-id={run.id}")
            if time.monotonic() > until or (pods and pods[0]["status"].get("phase") in ("Succeeded", "Failed")):
                break
            time.sleep(0.5)
        logs = [testbed.state_dir / "pods" / f"default_{p['metadata']['name']}" / "prefect-job.log" for p in pods]
        tail = "\n".join(p.read_text()[-3000:] for p in logs if p.exists())
        assert state is not None and state.is_completed(), f"{state}\n{tail}\n{(tmp_path / 'worker.log').read_text()[-2000:]}"
        # the flow ran in the Job's pod, as a local process of the test bed's pod runner
        assert pods and pods[0]["status"]["phase"] == "Succeeded" and any(p.exists() for p in logs)
        from tasks.history import Store

        store = Store.open(results["url"], endpoint=results["endpoint"], credentials=results["keys"])
        entries = store.list(spec["name"])
        assert len(entries) == 1 and entries[0].verdict in ("pass", "warn"), entries
    finally:
        _stop(worker)
        wlog.close()
        for job in kube.list("batch/v1", "Job", "default", label_selector="prefect.io/flow-run-id"):
            kube.delete("batch/v1", "Job", job["metadata"]["name"], "default", propagation="Foreground")
