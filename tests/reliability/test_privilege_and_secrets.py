"""Least privilege and no secret leaks, on the suite's private test bed.

One full run (stage -> teardown, under Prefect) as the pipeline's ServiceAccount from
``manifests/rbac.yaml``: an admin applies the administrator's part first (``tidegate plan
--admin``: ServiceAccount, RBAC, the model's PV and PVC, and the OSS Secret), as a user would, then
the flow runs with a kubeconfig holding the ServiceAccount's own token (TokenRequest), never the
admin's client certificate, and with the bed's canary OSS keys in its environment. Every
Kubernetes request of that run is recorded (``tests/reliability/kube_audit.py``) and compared
with the grants; verbs the flow does not need are shown forbidden by a SelfSubjectAccessReview and
by a real request answering 403; the canary keys and the token are searched for in everything the
run wrote.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from tests.reliability.helpers import (
    LOCAL_SPEC,
    SHORT_LOAD,
    Cli,
    run_cli,
    stderr_lines,
    validate_args,
)

pytestmark = pytest.mark.reliability
ALL_STAGES = "stage,prepare,deploy,smoke,spike,verify,gate,teardown"
SA, NS = "tidegate", "default"
DEFAULT_RBAC = ["--set", "storage.provision=false"]   # the default: the administrator made the volume


def _admin_part(bed, spec) -> list[dict]:
    """Apply ``tidegate plan --admin``'s objects and the OSS Secret as an administrator; the objects."""
    from tasks.render import render_admin

    admin = bed.admin()
    objs = render_admin(spec)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": spec.storage.oss.credentials.secret_name, "namespace": NS},
              "stringData": {"akId": bed.oss_key_id, "akSecret": bed.oss_key_secret}}
    for obj in objs + ([secret] if spec.storage.kind == "oss" and not spec.storage.provision else []):
        admin.apply(obj, force=True)
    return objs + ([secret] if spec.storage.kind == "oss" and not spec.storage.provision else [])


def _remove(bed, objs: list[dict]) -> None:
    admin = bed.admin()
    for obj in reversed(objs):
        meta = obj["metadata"]
        try:
            admin.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        except Exception as exc:  # noqa: BLE001
            print(f"clean-up of {obj['kind']} {meta['name']} failed: {exc}")


def _token(bed, account: str = SA) -> str:
    from kubernetes import client

    return client.CoreV1Api(bed.admin().api_client).create_namespaced_service_account_token(
        account, NS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                 "spec": {"expirationSeconds": 3600}}).status.token


def _kubeconfig(path: Path, server: str, token: str, ca: Path | None) -> Path:
    cluster = {"server": server}
    if ca is not None:
        cluster["certificate-authority"] = str(ca)
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "bed", "cluster": cluster}],
           "users": [{"name": SA, "user": {"token": token}}],
           "contexts": [{"name": "pipeline", "context": {"cluster": "bed", "user": SA, "namespace": NS}}],
           "current-context": "pipeline"}
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def _log_sizes(log_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in log_dir.glob("*.log")}


@pytest.fixture(scope="module")
def sa_run(bed, tmp_path_factory):
    from tasks.render import render_rbac
    from tasks.spec import load_spec

    work = tmp_path_factory.mktemp("least-privilege")
    admin = bed.admin()
    spec = load_spec(LOCAL_SPEC, ["storage.provision=false"])
    admin_objs = _admin_part(bed, spec)
    token = _token(bed)
    kubeconfig = _kubeconfig(work / "pipeline.kubeconfig", admin.server, token, bed.cfg.pki_dir / "ca.crt")
    audit = work / "kube-audit.jsonl"
    logs_before = _log_sizes(bed.cfg.log_dir)
    cli = Cli(bed, validate_args(bed, *SHORT_LOAD, *DEFAULT_RBAC, stages=ALL_STAGES, prefect=True,
                                 kubeconfig=kubeconfig),
              work / "reports", module="tests.reliability.kube_audit",
              env={"TIDEGATE_KUBE_AUDIT": str(audit), "TIDEGATE_OSS_ACCESS_KEY_ID": bed.oss_key_id,
                   "TIDEGATE_OSS_ACCESS_KEY_SECRET": bed.oss_key_secret})
    rid = cli.run_id()
    try:
        cli.wait(900)
        logs_after = _log_sizes(bed.cfg.log_dir)
        yield {"cli": cli, "rid": rid, "token": token, "kubeconfig": kubeconfig, "rbac": render_rbac(spec),
               "spec": spec, "admin_objs": admin_objs,
               "audit": [json.loads(ln) for ln in audit.read_text().splitlines()] if audit.exists() else [],
               "logs": {p: (logs_before.get(p, 0), logs_after[p]) for p in logs_after}, "work": work}
    finally:
        bed.cleanup(rid)
        _remove(bed, admin_objs)


# -- least privilege ----------------------------------------------------------------------------
def test_flow_runs_end_to_end_as_the_service_account(bed, sa_run, case):
    cli, rid = sa_run["cli"], sa_run["rid"]
    case.describe("the full flow as the ServiceAccount of manifests/rbac.yaml (TokenRequest token, the "
                  "administrator's part of `plan --admin` applied first)", "exit 0, every stage passed, every API "
                  "request made with the token, none forbidden; the run created only its ResourcePolicy, "
                  "InferenceService and HPA; nothing left; the administrator's part intact")
    rep = cli.report()
    stages = {k: v["status"] for k, v in rep["stages"].items()}
    audit = sa_run["audit"]
    forbidden = [a for a in audit if a["status"] in (401, 403)]
    without_token = [a for a in audit if not a["bearer"]]
    left = bed.leftovers(rid)
    case.seconds = cli.seconds
    prepare_note = rep["stages"]["prepare"]["detail"].split("; warnings: ")[-1][:80]
    listed = ", ".join(f"{k} {v}" for k, v in stages.items())
    case.observe(f"exit {cli.rc}, verdict {rep['verdict']}; stages: {listed}; "
                 f"{len(audit)} API requests, {len(without_token)} without the token, {len(forbidden)} forbidden; "
                 f"prepare: {prepare_note}; left: {left or 'nothing'}")
    assert cli.rc == 0, cli.stderr[-2500:]
    assert all(s == "passed" for s in stages.values()), stages
    assert audit and not without_token and not forbidden, (without_token[:3], forbidden[:3])
    assert [o["kind"] for o in rep["objects"]] == ["ResourcePolicy", "InferenceService", "HorizontalPodAutoscaler"]
    assert left == []
    admin = bed.admin()
    for obj in sa_run["admin_objs"]:   # the run never deletes what it did not create
        meta = obj["metadata"]
        assert admin.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")) is not None, obj["kind"]


def _rbac_requests(method: str, url: str) -> list[tuple[str, str, str, str | None, str | None]]:
    """The (verb, group, resource, namespace, name) that RBAC authorizes for one API request: none
    for discovery and for APIs every authenticated user may call; server-side apply (a PATCH with a
    fieldManager) is authorized as patch, and as create when the object is new."""
    parsed = urlparse(url)
    parts = [p for p in parsed.path.split("/") if p]
    query = parse_qs(parsed.query)
    if parts[:1] == ["api"] and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return []
    if group in ("authorization.k8s.io", "authentication.k8s.io"):
        return []
    ns = None
    if rest[0] == "namespaces" and len(rest) > 2:
        ns, rest = rest[1], rest[2:]
    resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    selector = (query.get("fieldSelector") or [""])[0]
    if name is None and selector.startswith("metadata.name="):
        name = selector.split("=", 1)[1]
    if method == "GET":
        verb = "get" if rest[1:2] else ("watch" if (query.get("watch") or [""])[0].lower() in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if rest[1:2] else "deletecollection"}[method]
    out = [(verb, group, resource, ns, name)]
    if method == "PATCH" and query.get("fieldManager"):
        out.append(("create", group, resource, ns, name))
    return out


def _grants(rbac: list[dict]) -> list[tuple[str, str | None, str, str, str, tuple[str, ...]]]:
    """(role, namespace or None for cluster-wide, group, resource, verb, resourceNames)."""
    out = []
    for obj in rbac:
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        ns = obj["metadata"].get("namespace") if obj["kind"] == "Role" else None
        for rule in obj["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.append((f"{obj['kind']} {obj['metadata']['name']}", ns, group, resource, verb,
                                    tuple(rule.get("resourceNames") or ())))
    return out


def _matches(grant, req) -> bool:
    _, g_ns, group, resource, verb, names = grant
    r_verb, r_group, r_resource, r_ns, r_name = req
    return ((g_ns is None or g_ns == r_ns) and group == r_group and resource == r_resource and verb == r_verb
            and (not names or r_name in names))


def test_rbac_grants_only_what_the_flow_uses(sa_run, case):
    case.describe("RBAC is the minimum that passes: rendered grants vs the API requests of the full run",
                  "every request covered by a grant; every grant used by the run")
    requests = {r for a in sa_run["audit"] for r in _rbac_requests(a["method"], a["url"])}
    grants = _grants(sa_run["rbac"])
    uncovered = sorted(r for r in requests if not any(_matches(g, r) for g in grants))
    unused = sorted({f"{g[0]}: {g[4]} {g[2] + '/' if g[2] else ''}{g[3]}" for g in grants
                     if not any(_matches(g, r) for r in requests)})
    case.observe(f"{len(requests)} distinct (verb, resource, namespace, name) requests, {len(grants)} grants; "
                 f"uncovered: {uncovered or 'none'}; grants the run never used: {unused or 'none'}")
    assert not uncovered
    assert not unused, unused


def _audited_run(bed, work: Path, sets: list[str], stages: str) -> tuple[Cli, list[dict], list[dict]]:
    """A run as the ServiceAccount with the administrator's part of ``sets`` applied first: the CLI,
    the RBAC objects, and every API request it made."""
    from tasks.render import render_rbac
    from tasks.spec import load_spec

    spec = load_spec(LOCAL_SPEC, list(sets[1::2]))
    objs = _admin_part(bed, spec)
    token = _token(bed, spec.cluster.service_account)
    kubeconfig = _kubeconfig(work / "pipeline.kubeconfig", bed.admin().server, token, bed.cfg.pki_dir / "ca.crt")
    audit = work / "kube-audit.jsonl"
    try:
        cli = run_cli(bed, validate_args(bed, *sets, stages=stages, kubeconfig=kubeconfig), work / "reports",
                      module="tests.reliability.kube_audit", timeout_s=600,
                      env={"TIDEGATE_KUBE_AUDIT": str(audit), "TIDEGATE_OSS_ACCESS_KEY_ID": bed.oss_key_id,
                           "TIDEGATE_OSS_ACCESS_KEY_SECRET": bed.oss_key_secret})
        bed.cleanup(cli.run_id())
    finally:
        _remove(bed, objs)
    requests = [json.loads(ln) for ln in audit.read_text().splitlines()] if audit.exists() else []
    return cli, render_rbac(spec), requests


def test_rbac_of_the_other_variants_is_used_too(bed, sa_run, tmp_path, case):
    """Placement affinity with storage.provision (the provisioner Role and ClusterRole): a run up to
    the smoke test as the ServiceAccount. Every request is granted; every grant it did not use is one
    the full run above used in a stage this run skipped (the observer's); every provisioner grant is used."""
    case.describe("RBAC of placement affinity + storage.provision, as the ServiceAccount (prepare, deploy, smoke, "
                  "teardown)", "exit 3 (no gate), nothing forbidden; unused grants only the spike's; each "
                  "provisioner grant used; nothing left")
    # an identity and volume names of its own: the full run's administrator's part stays as it is
    sets = ["--set", "cluster.placement=affinity", "--set", "storage.provision=true",
            "--set", "cluster.service_account=tidegate-variant", "--set", "storage.pvc_name=llm-model-variant",
            "--set", "storage.oss.credentials.secret_name=tidegate-oss-variant"]
    cli, rbac, audit = _audited_run(bed, tmp_path, sets, "prepare,deploy,smoke,teardown")
    requests = {r for a in audit for r in _rbac_requests(a["method"], a["url"])}
    full_run = {r for a in sa_run["audit"] for r in _rbac_requests(a["method"], a["url"])}
    grants = _grants(rbac)
    forbidden = [a for a in audit if a["status"] in (401, 403)]
    uncovered = sorted(r for r in requests if not any(_matches(g, r) for g in grants))
    unused = [g for g in grants if not any(_matches(g, r) for r in requests)]
    unexplained = sorted({f"{g[0]}: {g[4]} {g[3]}" for g in unused
                          if not any(_matches(g, r) for r in full_run) or g[0].endswith("-provisioner")})
    rep = cli.report()
    case.seconds = cli.seconds
    case.observe(f"exit {cli.rc}; created {[o['kind'] for o in rep['objects']]}; {len(requests)} distinct requests, "
                 f"{len(forbidden)} forbidden, uncovered {uncovered or 'none'}; {len(unused)} grants unused here "
                 f"(used by the full run's spike), unexplained: {unexplained or 'none'}")
    assert cli.rc == 3, cli.stderr[-1500:]
    assert [o["kind"] for o in rep["objects"]] == ["Secret", "PersistentVolume", "PersistentVolumeClaim",
                                                   "InferenceService", "HorizontalPodAutoscaler"]
    assert not forbidden and not uncovered, (forbidden[:3], uncovered)
    assert unexplained == []
    assert bed.leftovers(cli.run_id()) == []


FORBIDDEN = [  # (verb, resource, group, namespace, what a real request does)
    ("delete", "nodes", "", None, "delete Node idc-gpu-0"),
    ("create", "clusterroles", "rbac.authorization.k8s.io", None, "create ClusterRole tidegate-escalate"),
    ("get", "secrets", "", "kube-system", "get Secret kube-system/bootstrap-token"),
    ("list", "secrets", "", NS, "list Secrets in default"),
    ("create", "rolebindings", "rbac.authorization.k8s.io", NS, "create RoleBinding default/tidegate-admin"),
    ("delete", "pods", "", NS, "delete Pod default/x"),
    ("create", "pods", "", NS, "create Pod default/tidegate-shell"),
]


def test_unneeded_verbs_are_forbidden(bed, sa_run, case):
    from tasks.errors import ClusterError
    from tasks.kube import Kube

    case.describe("verbs the flow does not need, as the ServiceAccount",
                  "SelfSubjectAccessReview says no AND the real request answers 403, for each")
    kube = Kube.connect(kubeconfig=sa_run["kubeconfig"])
    reviews = {f"{v} {g + '/' if g else ''}{r}{' -n ' + ns if ns else ''}": kube.can_i(v, r, group=g, namespace=ns)
               for v, r, g, ns, _ in FORBIDDEN}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tidegate-shell", "namespace": NS},
           "spec": {"containers": [{"name": "sh", "image": "busybox"}]}}
    calls = {
        "delete Node idc-gpu-0": lambda: kube.delete("v1", "Node", "idc-gpu-0"),
        "create ClusterRole tidegate-escalate": lambda: kube.create(
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "tidegate-escalate"},
             "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        "get Secret kube-system/bootstrap-token": lambda: kube.get("v1", "Secret", "bootstrap-token", "kube-system"),
        "list Secrets in default": lambda: kube.list("v1", "Secret", NS),
        "create RoleBinding default/tidegate-admin": lambda: kube.create(
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "tidegate-admin", "namespace": NS},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}]}),
        "delete Pod default/x": lambda: kube.delete("v1", "Pod", "x", NS),
        "create Pod default/tidegate-shell": lambda: kube.create(pod),
    }
    statuses = {}
    for what, call in calls.items():
        try:
            call()
            statuses[what] = "allowed!"
        except ClusterError as exc:
            statuses[what] = getattr(exc.__cause__, "status", None)
    admin = bed.admin()
    case.observe("; ".join(f"{k}: review allowed={reviews[k]}" for k in reviews) + " || real requests: "
                 + "; ".join(f"{k} -> {v}" for k, v in statuses.items()))
    assert not any(reviews.values()), reviews
    assert kube.can_i("create", "secrets", namespace=NS) is False   # `kubectl auth can-i create secrets`: no
    assert all(v == 403 for v in statuses.values()), statuses
    assert admin.get("v1", "Node", "idc-gpu-0") is not None
    assert admin.get("rbac.authorization.k8s.io/v1", "ClusterRole", "tidegate-escalate") is None


def test_cleanup_as_the_service_account(bed, sa_run, tmp_path, case):
    case.describe("`tidegate cleanup --run-id --spec` as the ServiceAccount, after a run that stopped after prepare",
                  "exit 0; what the run's ledger names is gone (checked as admin); the administrator's Secret, "
                  "PV and PVC are still there")
    keys = {"TIDEGATE_OSS_ACCESS_KEY_ID": bed.oss_key_id, "TIDEGATE_OSS_ACCESS_KEY_SECRET": bed.oss_key_secret}
    cli = run_cli(bed, validate_args(bed, *DEFAULT_RBAC, stages="prepare", kubeconfig=sa_run["kubeconfig"]),
                  tmp_path / "run", env=keys, timeout_s=300)
    rid = cli.run_id()
    before = bed.leftovers(rid)
    clean = run_cli(bed, ["cleanup", "--run-id", rid, "--spec", str(LOCAL_SPEC), *bed.sets(sa_run["kubeconfig"])],
                    tmp_path / "cleanup", env={**keys, "TIDEGATE_REPORTS_DIR": str(cli.reports)}, timeout_s=300)
    left = bed.leftovers(rid)
    admin = bed.admin()
    kept = [o["kind"] for o in sa_run["admin_objs"] if admin.get(
        o["apiVersion"], o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) is not None]
    case.seconds = cli.seconds + clean.seconds
    case.observe(f"run exit {cli.rc} left {len(before)} objects ({', '.join(before)}); cleanup as the account exit "
                 f"{clean.rc}; left: {left or 'nothing'}")
    assert cli.rc == 3, cli.stderr[-1500:]  # stopped after prepare: nothing judged, inconclusive
    assert before == ["ResourcePolicy/default/qwen-chat"]
    assert clean.rc == 0, clean.stderr[-1500:]
    assert left == []
    assert len(kept) == len(sa_run["admin_objs"]), kept


def test_tls_verification_stays_on(bed, sa_run, tmp_path, case):
    """The kubeconfig gives the bed's self-signed CA; without it, or with another CA, tidegate
    refuses to talk to the apiserver instead of skipping verification."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from tasks.kube import Kube

    case.describe("TLS verification against the bed's self-signed CA (given through the kubeconfig)",
                  "verify_ssl on; a kubeconfig without the CA, or with another CA, fails with exit 2 before "
                  "anything is created")
    assert Kube.connect(kubeconfig=sa_run["kubeconfig"]).api_client.configuration.verify_ssl is True
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-the-bed-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    other = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    server = bed.admin().server
    observed = []
    for label, ca in (("no CA", None), ("another CA", other_ca)):
        kc = _kubeconfig(tmp_path / f"{label.replace(' ', '-')}.kubeconfig", server, sa_run["token"], ca)
        cli = Cli(bed, validate_args(bed, stages="prepare,teardown", kubeconfig=kc), tmp_path / label.replace(" ", "-"))
        rc = cli.wait(300)
        last = stderr_lines(cli.stderr)[-1]
        rid = cli.run_id()
        left = bed.leftovers(rid)
        observed.append(f"{label}: exit {rc} ({last[:110]}); left: {left or 'nothing'}")
        assert rc == 2 and "TLS verification failed" in last and left == [], cli.stderr[-1500:]
    case.observe("; ".join(observed))


# -- no secret leaks ----------------------------------------------------------------------------
def _needles(bed, token: str) -> dict[str, bytes]:
    out = {}
    for label, value in (("OSS access key id", bed.oss_key_id), ("OSS access key secret", bed.oss_key_secret),
                         ("ServiceAccount token", token), ("token signature", token.rsplit(".", 1)[-1])):
        out[label] = value.encode()
        out[f"{label} (base64)"] = base64.b64encode(value.encode())[:-4]
    return out


def _leaks(bed, cli: Cli, rid: str, needles: dict[str, bytes], logs: dict[Path, tuple[int, int]]
           ) -> tuple[list[str], dict[str, bytes], int, int]:
    """(hits, places searched, Prefect artifacts, Prefect log lines) of ``needles`` in everything
    the run wrote: its console, report directory, the bed's logs of the run, Prefect's files and
    database (artifacts, logs, flow and task run states and their messages)."""
    places: dict[str, bytes] = {"CLI stdout": cli.out_path.read_bytes(), "CLI stderr": cli.err_path.read_bytes()}
    report_dir = cli.reports / rid
    for path in sorted(report_dir.rglob("*")):
        if path.is_file():
            places[f"report {path.relative_to(report_dir)}"] = path.read_bytes()
    for path, (start, end) in logs.items():
        with open(path, "rb") as fh:
            fh.seek(start)
            places[f"bed log {path.name}"] = fh.read(end - start)
    for path in sorted(bed.prefect_home.rglob("*")):
        if path.is_file():
            places[f"Prefect {path.relative_to(bed.prefect_home)}"] = path.read_bytes()
    db = bed.prefect_home / "prefect.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        artifacts = [str(r[0] or "") for r in conn.execute("select data from artifact")]
        log_lines = [str(r[0] or "") for r in conn.execute("select message from log")]
        states = [f"{r[0]} {r[1]}" for table in ("flow_run_state", "task_run_state")
                  for r in conn.execute(f"select message, data from {table}")]  # noqa: S608 - fixed names
    places["Prefect artifacts (query)"] = "\n".join(artifacts).encode()
    places["Prefect logs (query)"] = "\n".join(log_lines).encode()
    places["Prefect states (query)"] = "\n".join(states).encode()
    hits = [f"{what} in {where}" for where, blob in places.items()
            for what, needle in needles.items() if needle in blob]
    return hits, places, len(artifacts), len(log_lines)


def test_no_secret_in_reports_logs_or_prefect(bed, sa_run, case):
    case.describe("no secret leaks: canary OSS keys and the ServiceAccount token after the full run",
                  "zero hits in the report dir, CLI stdout/stderr, the bed's logs of the run, Prefect's "
                  "database (artifacts, logs, states, parameters) and result storage")
    cli, rid = sa_run["cli"], sa_run["rid"]
    hits, places, artifacts, log_lines = _leaks(bed, cli, rid, _needles(bed, sa_run["token"]), sa_run["logs"])
    control = sum(rid.encode() in blob for blob in places.values())
    files = sum(1 for p in places if p.startswith(("report", "bed log", "Prefect ")))
    case.observe(f"searched {len(places)} sources ({files} files, {artifacts} Prefect artifacts, {log_lines} "
                 f"Prefect log lines) for 8 needles (keys, token, token signature, and their base64): "
                 f"{len(hits)} hits{': ' + '; '.join(hits[:4]) if hits else ''}; control: the run id appears in "
                 f"{control} sources")
    assert artifacts, "the run published no Prefect artifact to search"
    assert control >= 3
    assert hits == []


def test_no_secret_leaks_from_a_failing_run(bed, sa_run, tmp_path, case):
    """The same search after a run that fails (its smoke test meets no gateway) with the canary keys
    in its environment, and a canary token in the environment of the process too: error paths, failed
    Prefect states and the hook's messages carry no secret either."""
    case.describe("no secret leaks from a failing run (under Prefect, smoke against a closed port)",
                  "exit 1; zero hits for the canary keys and a canary token in the environment")
    token = "tgcanarytoken" + "x7" * 12
    logs_before = _log_sizes(bed.cfg.log_dir)
    cli = run_cli(bed, validate_args(bed, "--set", "ingress.url=http://127.0.0.1:9", *DEFAULT_RBAC, prefect=True,
                                     stages="stage,prepare,deploy,smoke,teardown"),
                  tmp_path / "failing", timeout_s=600,
                  env={"TIDEGATE_OSS_ACCESS_KEY_ID": bed.oss_key_id, "TIDEGATE_OSS_ACCESS_KEY_SECRET": bed.oss_key_secret,
                       "KUBE_TOKEN": token})
    rid = cli.run_id()
    logs = {p: (logs_before.get(p, 0), size) for p, size in _log_sizes(bed.cfg.log_dir).items()}
    needles = _needles(bed, token)
    hits, places, artifacts, _ = _leaks(bed, cli, rid, needles, logs)
    rep = cli.report()
    case.seconds = cli.seconds
    case.observe(f"exit {cli.rc}, smoke {rep['stages']['smoke']['status']}; searched {len(places)} sources: "
                 f"{len(hits)} hits{': ' + '; '.join(hits[:4]) if hits else ''}")
    assert cli.rc == 1, cli.stderr[-1500:]
    assert rep["stages"]["smoke"]["status"] == "failed" and rep["staging"]["verified"] is True
    assert hits == []
    assert bed.leftovers(rid) == []


def test_staged_keys_really_were_used(bed, sa_run, case):
    """The canary keys searched for above are the ones the run authenticated with (positive
    control): the bed's object store knows no other key pair, so a verified staging used them,
    and the OSS CSI Secret the run applied was built from them."""
    from testbed.objectstore import load_keys

    case.describe("control for the secret search", "the run staged with the canary keys (the bed's only key "
                  "pair) and applied the OSS Secret built from them, so a leak had something to leak")
    rep = sa_run["cli"].report()
    applied = rep["stages"]["prepare"]["detail"]
    staged = rep["staging"]
    case.observe(f"bed key pair = canary: {load_keys(bed.cfg.state_dir) == (bed.oss_key_id, bed.oss_key_secret)}; "
                 f"staging verified {staged.get('verified')} ({staged.get('files')} files to {staged.get('uri')}); "
                 f"prepare {applied.split(';')[-2].strip() if ';' in applied else applied[:60]}")
    assert load_keys(bed.cfg.state_dir) == (bed.oss_key_id, bed.oss_key_secret)
    assert staged.get("verified") is True and staged.get("files", 0) > 0
    assert "created 1 object;" in applied or applied.endswith("created 1 object")  # the ResourcePolicy: RBAC, PV, PVC, Secret are the administrator's

