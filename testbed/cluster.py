"""Bring the test bed up and down, and report its status.

Start order (all on 127.0.0.1): etcd -> kube-apiserver -> kube-controller-manager and
kube-scheduler -> bootstrap objects (IDC nodes, autoscaler ConfigMaps) -> kwok ->
cluster-autoscaler -> the data plane (``testbed.dataplane.COMPONENTS``) -> the object store
(``testbed.objectstore.COMPONENTS``). ``up`` always starts from an empty etcd, so a crashed run leaves
nothing behind for the next one; ``down`` stops in reverse order, the autoscaler first while
the apiserver still answers (on SIGTERM its kwok provider deletes every node of its group,
known upstream behaviour), and then checks that none of the test bed's ports is still held.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.request

from pathlib import Path

import yaml

from tasks.names import NODEPOOL_LABEL
from testbed import pki
from testbed.build import COMPONENTS, require_binary
from testbed.config import TestbedConfig, load_config, save_config
from testbed.errors import TestbedError
from testbed.realism import REALISM_FILE
from testbed import dataplane, objectstore
from testbed.procs import Component, Proc, ProcessTable, check_ports, kube, port_free, reap_strays, wait_until
from testbed.resourcepolicy import EXTENDER_PATH, extender_config

EDGE_LABEL = "alibabacloud.com/is-edge-worker"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
CA_GROUP_LABEL = "kwok-nodegroup"
CA_NAMESPACE = "kube-system"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"


# -- readiness probes ------------------------------------------------------------------------
def _https_ok(url: str, cfg: TestbedConfig, *, client_cert: bool = True, timeout: float = 2.0) -> bool:
    ctx = ssl.create_default_context(cafile=str(cfg.pki_dir / "ca.crt"))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE if not client_cert else ssl.CERT_REQUIRED
    if client_cert:
        ctx.load_cert_chain(str(cfg.pki_dir / "admin.crt"), str(cfg.pki_dir / "admin.key"))
    else:
        ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return resp.status == 200


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return resp.status == 200


def apiserver_url(cfg: TestbedConfig) -> str:
    return f"https://127.0.0.1:{cfg.ports.apiserver}"


# -- etcd -----------------------------------------------------------------------------------
def _etcd_proc(cfg: TestbedConfig) -> Proc:
    p = cfg.ports
    data = cfg.state_dir / "etcd"
    return Proc("etcd", [
        str(require_binary("etcd", "etcd")), "--name=testbed", f"--data-dir={data}",
        f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
        f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
        f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
        f"--initial-cluster=testbed=http://127.0.0.1:{p.etcd_peer}",
        "--listen-metrics-urls=", "--auto-compaction-mode=periodic", "--auto-compaction-retention=5m",
        "--quota-backend-bytes=4294967296", "--unsafe-no-fsync", "--log-level=warn",
    ], [p.etcd_client, p.etcd_peer])


def _etcd_fresh(cfg: TestbedConfig) -> None:
    shutil.rmtree(cfg.state_dir / "etcd", ignore_errors=True)


# -- control plane --------------------------------------------------------------------------
def _apiserver_proc(cfg: TestbedConfig) -> Proc:
    k = cfg.pki_dir
    return Proc("kube-apiserver", [
        str(require_binary("k8s", "kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{cfg.ports.etcd_client}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={cfg.ports.apiserver}",
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={k / 'apiserver.crt'}", f"--tls-private-key-file={k / 'apiserver.key'}",
        f"--client-ca-file={k / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={k / 'sa.pub'}", f"--service-account-signing-key-file={k / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=Node,RBAC",
        "--allow-privileged=true", "--profiling=false", "--event-ttl=2h",
        f"--requestheader-client-ca-file={k / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={k / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={k / 'front-proxy-client.key'}",
        "--enable-aggregator-routing=false", "--v=1",
    ], [cfg.ports.apiserver])


def _dur(seconds: float) -> str:
    """A Go duration flag value (``15s``, ``2.5s``)."""
    return f"{float(seconds):g}s"


def _kcm_proc(cfg: TestbedConfig) -> Proc:
    k = cfg.pki_dir
    return Proc("kube-controller-manager", [
        str(require_binary("k8s", "kube-controller-manager")), f"--kubeconfig={cfg.kubeconfig}",
        f"--authentication-kubeconfig={cfg.kubeconfig}", f"--authorization-kubeconfig={cfg.kubeconfig}",
        "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={cfg.ports.controller_manager}",
        f"--service-account-private-key-file={k / 'sa.key'}", f"--root-ca-file={k / 'ca.crt'}",
        "--use-service-account-credentials=false", "--controllers=*,-nodeipam,-cloud-node-lifecycle",
        f"--horizontal-pod-autoscaler-sync-period={_dur(cfg.timings.hpa_sync_period_s)}",
        f"--horizontal-pod-autoscaler-downscale-stabilization={_dur(cfg.timings.hpa_downscale_stabilization_s)}",
        "--horizontal-pod-autoscaler-initial-readiness-delay=5s",
        "--horizontal-pod-autoscaler-cpu-initialization-period=10s",
        "--node-monitor-grace-period=60s", "--profiling=false", "--v=1",
    ], [cfg.ports.controller_manager])


def scheduler_config(cfg: TestbedConfig) -> dict:
    """KubeSchedulerConfiguration: upstream defaults plus ACK's ResourcePolicy as an extender
    served by the test-bed daemon (``testbed.resourcepolicy``): the unit order is enforced at
    scheduling time, the pods carry no affinity for it and the autoscaler does not see it."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(cfg.kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "enableProfiling": False,
        "extenders": [extender_config(f"http://127.0.0.1:{cfg.ports.daemon}{EXTENDER_PATH}")],
    }


def _scheduler_proc(cfg: TestbedConfig) -> Proc:
    path = cfg.state_dir / "kube-scheduler.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(scheduler_config(cfg), sort_keys=False))
    return Proc("kube-scheduler", [
        str(require_binary("k8s", "kube-scheduler")), f"--config={path}",
        f"--authentication-kubeconfig={cfg.kubeconfig}", f"--authorization-kubeconfig={cfg.kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={cfg.ports.scheduler}", "--v=1",
    ], [cfg.ports.scheduler])


# -- nodes ----------------------------------------------------------------------------------
def _node_status(pool) -> dict:
    res = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110", "nvidia.com/gpu": str(pool.gpus_per_node)}
    return {"capacity": dict(res), "allocatable": dict(res)}


def _pool_labels(pool) -> dict:
    return {
        NODEPOOL_LABEL: pool.nodepool_id,
        EDGE_LABEL: "true" if pool.edge_worker else "false",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": pool.gpu_product,
    }


def idc_node(cfg: TestbedConfig, i: int) -> dict:
    name = f"idc-gpu-{i}"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {**_pool_labels(cfg.idc), "kubernetes.io/hostname": name}},
        "status": _node_status(cfg.idc),
    }


def elastic_templates(cfg: TestbedConfig) -> list[dict]:
    e = cfg.elastic
    tmpl = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"{e.group}-template",
                     "annotations": {"cluster-autoscaler.kwok.nodegroup/min-count": str(e.min_nodes),
                                     "cluster-autoscaler.kwok.nodegroup/max-count": str(e.max_nodes)},
                     "labels": {**_pool_labels(e), CA_GROUP_LABEL: e.group}},
        "spec": {},
        "status": _node_status(e),
    }
    if cfg.timings.node_delays:
        # a kubelet registers its node with this taint until the node is Ready (the node lifecycle
        # controller removes it then); the autoscaler drops condition taints from templates
        tmpl["spec"]["taints"] = [{"key": NOT_READY_TAINT, "effect": "NoSchedule"}]
        # and with Ready=False, else the node lifecycle controller drops that taint at once (no
        # condition asks for it) and pods land on a node kwok has not made Ready yet
        tmpl["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                                         "message": "node is provisioning (realism profile)"}]
    return [tmpl]


def _apply_autoscaler_config(cfg: TestbedConfig) -> None:
    """The kwok provider's ConfigMaps: provider config and the elastic pool's node template."""
    k = kube(cfg)
    provider_cfg = {
        "apiVersion": "v1alpha1",
        "readNodesFrom": "configmap",
        "nodegroups": {"fromNodeLabelKey": CA_GROUP_LABEL},
        "nodes": {"skipTaint": True, "gpuConfig": {"gpuLabelKey": "nvidia.com/gpu.product",
                                                    "availableGPUTypes": {cfg.elastic.gpu_product: {}}}},
        "configmap": {"name": "kwok-provider-templates"},
    }
    k.apply({"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "kwok-provider-config", "namespace": CA_NAMESPACE},
             "data": {"config": yaml.safe_dump(provider_cfg)}}, field_manager="tidegate-testbed", force=True)
    templates = {"apiVersion": "v1", "kind": "List", "items": elastic_templates(cfg)}
    k.apply({"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "kwok-provider-templates", "namespace": CA_NAMESPACE},
             "data": {"templates": yaml.safe_dump(templates)}}, field_manager="tidegate-testbed", force=True)


def _delete_leftover_elastic_nodes(cfg: TestbedConfig) -> None:
    """A previous autoscaler killed with SIGKILL leaves its nodes behind: start from a clean pool."""
    k = kube(cfg)
    for node in k.list("v1", "Node", label_selector=CA_GROUP_LABEL):
        k.delete("v1", "Node", node["metadata"]["name"])


def _bootstrap(cfg: TestbedConfig) -> None:
    """Objects that must exist before kwok and the autoscaler start."""
    k = kube(cfg)
    for i in range(cfg.idc.nodes):
        k.apply(idc_node(cfg, i), field_manager="tidegate-testbed", force=True)
    _apply_autoscaler_config(cfg)
    _delete_leftover_elastic_nodes(cfg)


def reconfigure_autoscaler(cfg: TestbedConfig) -> None:
    """Apply the elastic pool settings of ``cfg`` and restart the autoscaler (it reads them at start).

    Restarting deletes the group's nodes (the kwok provider's cleanup on SIGTERM).
    """
    table = _table(cfg)
    comp = next(c for c in CONTROL_PLANE if c.name == "cluster-autoscaler")
    table.stop(comp.name, timeout=comp.stop_timeout_s)
    _apply_autoscaler_config(cfg)
    _delete_leftover_elastic_nodes(cfg)
    k = kube(cfg)
    k.delete("v1", "ConfigMap", "cluster-autoscaler-status", CA_NAMESPACE)
    table.start(comp.make_proc(cfg))
    wait_until(lambda: comp.ready(cfg), timeout=comp.timeout_s, what=comp.name,
               died=lambda: table.exited_early(comp.name))


def _nodes_ready(cfg: TestbedConfig) -> bool:
    nodes = kube(cfg).list("v1", "Node", label_selector=f"{NODEPOOL_LABEL}={cfg.idc.nodepool_id}")
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n.get("status", {}).get("conditions") or [])]
    return len(ready) >= cfg.idc.nodes


# predictor pods get their status from the test-bed daemon (it acts as their kubelet: Running
# once the emulator replica starts, Ready only after the model-load delay), so kwok's own
# pod-ready stage must leave them alone
DAEMON_MANAGED_POD_LABEL = "serving.kserve.io/inferenceservice"
# pods the daemon's pod runner runs as local processes (testbed.podrunner): their Running,
# Succeeded and Failed are the process's, so kwok must neither mark them Ready nor complete them
LOCAL_EXEC_POD_LABEL = "tidegate.dev/local-exec"


def _kwok_stages(cfg: TestbedConfig) -> list[Path]:
    src = sorted((COMPONENTS["kwok"].bin_dir() / "stages").glob("*.yaml"))
    if not src:
        raise TestbedError("kwok: stage files missing from the build cache; run `make testbed-build`")
    out_dir = cfg.state_dir / "kwok-stages"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for f in src:
        stage = yaml.safe_load(f.read_text())
        if stage["metadata"]["name"] == "pod-ready":
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": f'.metadata.labels["{DAEMON_MANAGED_POD_LABEL}"]', "operator": "DoesNotExist"})
        extra: list[dict] = []
        if stage["metadata"]["name"] == "node-initialize" and cfg.timings.node_delays:
            extra = elastic_node_stages(stage, cfg)
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": f'.metadata.labels["{CA_GROUP_LABEL}"]', "operator": "DoesNotExist"})
        if stage["metadata"]["name"] in ("pod-ready", "pod-complete"):
            stage["spec"]["selector"]["matchExpressions"].append(
                {"key": f'.metadata.labels["{LOCAL_EXEC_POD_LABEL}"]', "operator": "DoesNotExist"})
        for st in [stage, *extra]:
            dst = out_dir / (f.name if st is stage else f"{st['metadata']['name']}.yaml")
            dst.write_text(yaml.safe_dump(st, sort_keys=False))
            out.append(dst)
    return out


# the allocatable block of kwok's node-initialize template, and what an elastic node gets instead
# while its GPUs are not yet allocatable (the device plugin has not registered them)
_TRANSITION_AT_CREATION = "{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}"
_ALLOCATABLE = """allocatable:
{{ with .status.allocatable }}
{{ YAML . 1 }}"""
_ALLOCATABLE_NO_GPU = """allocatable:
{{ with .status.allocatable }}
{{ range $k, $v := . }}
  {{ $k | Quote }}: {{ if eq $k "nvidia.com/gpu" }}"0"{{ else }}{{ $v | Quote }}{{ end }}
{{ end }}"""


def elastic_node_stages(initialize: dict, cfg: TestbedConfig) -> list[dict]:
    """The realism profile's node timings as KWOK stages for the elastic pool's nodes (the
    autoscaler's, labelled ``kwok-nodegroup``; IDC nodes keep the undelayed stage):
    ``node-initialize-elastic`` turns a node Ready ``node_ready_s`` (+ up to
    ``node_ready_jitter_s``) after kwok sees it; with ``gpu_allocatable_s``, its
    ``nvidia.com/gpu`` stays 0 until ``node-gpu-allocatable`` sets it to the capacity that much
    later (the autoscaler counts such a GPU node as unready, as on ACK)."""
    t = cfg.timings
    stage = yaml.safe_load(yaml.safe_dump(initialize))
    stage["metadata"]["name"] = "node-initialize-elastic"
    stage["spec"]["selector"]["matchExpressions"].append(
        {"key": f'.metadata.labels["{CA_GROUP_LABEL}"]', "operator": "Exists"})
    # kwok stamps the conditions' lastTransitionTime with the node's creation time: this node turns
    # Ready now, which is what a watcher of the Ready condition must read
    template = stage["spec"]["next"]["statusTemplate"]
    if _TRANSITION_AT_CREATION not in template:
        raise TestbedError("kwok's node-initialize stage changed: cannot stamp the Ready transition")
    stage["spec"]["next"]["statusTemplate"] = template.replace(_TRANSITION_AT_CREATION, "{{ $lastTransitionTime := $now }}")
    ready_ms = int(t.node_ready_s * 1000)
    stage["spec"]["delay"] = {"durationMilliseconds": ready_ms,
                              "jitterDurationMilliseconds": ready_ms + int(t.node_ready_jitter_s * 1000)}
    if not t.gpu_allocatable_s:
        return [stage]
    template = stage["spec"]["next"]["statusTemplate"]
    if _ALLOCATABLE not in template:
        raise TestbedError("kwok's node-initialize stage changed: cannot delay nvidia.com/gpu allocatable")
    stage["spec"]["next"]["statusTemplate"] = template.replace(_ALLOCATABLE, _ALLOCATABLE_NO_GPU)
    gpu_ms = int(t.gpu_allocatable_s * 1000)
    allocatable = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
        "metadata": {"name": "node-gpu-allocatable"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Node"},
            "selector": {"matchExpressions": [
                {"key": f'.metadata.labels["{CA_GROUP_LABEL}"]', "operator": "Exists"},
                {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "In",
                 "values": ["True"]},
                {"key": '.status.allocatable["nvidia.com/gpu"]', "operator": "In", "values": ["0"]},
                {"key": '.status.capacity["nvidia.com/gpu"]', "operator": "NotIn", "values": ["0"]},
            ]},
            # the heartbeat stage matches the node too: kwok plays one matching stage, by weight
            "weight": 1,
            "delay": {"durationMilliseconds": gpu_ms, "jitterDurationMilliseconds": gpu_ms},
            "next": {"statusTemplate": 'allocatable:\n  nvidia.com/gpu: {{ index .status.capacity "nvidia.com/gpu" '
                                       '| Quote }}\n'},
        },
    }
    return [stage, allocatable]


def _kwok_proc(cfg: TestbedConfig) -> Proc:
    stages = _kwok_stages(cfg)
    argv = [str(require_binary("kwok", "kwok")), f"--kubeconfig={cfg.kubeconfig}"]
    for s in stages:
        argv.append(f"--config={s}")
    argv += ["--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
             "--node-lease-duration-seconds=40", "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1",
             f"--server-address=127.0.0.1:{cfg.ports.kwok}", "--v=WARN"]
    return Proc("kwok", argv, [cfg.ports.kwok])


def _ca_proc(cfg: TestbedConfig) -> Proc:
    t = cfg.timings
    env = {"KWOK_PROVIDER_MODE": "local", "POD_NAMESPACE": CA_NAMESPACE, "KUBECONFIG": str(cfg.kubeconfig)}
    return Proc("cluster-autoscaler", [
        str(require_binary("ca", "cluster-autoscaler")), "--cloud-provider=kwok",
        f"--kubeconfig={cfg.kubeconfig}", f"--namespace={CA_NAMESPACE}", "--leader-elect=false",
        f"--address=127.0.0.1:{cfg.ports.autoscaler}",
        f"--scan-interval={_dur(t.ca_scan_interval_s)}", "--expander=least-waste",
        f"--scale-down-unneeded-time={_dur(t.ca_scale_down_unneeded_s)}",
        f"--scale-down-delay-after-add={_dur(t.ca_scale_down_delay_after_add_s)}",
        f"--new-pod-scale-up-delay={_dur(t.ca_new_pod_scale_up_delay_s)}",
        "--scale-down-delay-after-delete=0s", "--scale-down-delay-after-failure=10s",
        "--unremovable-node-recheck-timeout=10s", "--node-delete-delay-after-taint=0s",
        f"--max-node-provision-time={_dur(t.ca_max_node_provision_s)}", "--initial-node-group-backoff-duration=10s",
        "--skip-nodes-with-local-storage=false", "--skip-nodes-with-system-pods=false",
        "--scale-down-gpu-utilization-threshold=0.5", "--record-duplicated-events=true",
        "--write-status-configmap=true", "--v=2",
    ], [cfg.ports.autoscaler], env=env)


def _ca_ready(cfg: TestbedConfig) -> bool:
    """Healthy, and its status lists the elastic node group (its first loop is done): before that
    a run's preflight cannot tell the elastic pool exists."""
    if not _http_ok(f"http://127.0.0.1:{cfg.ports.autoscaler}/health-check"):
        return False
    cm = kube(cfg).get("v1", "ConfigMap", "cluster-autoscaler-status", CA_NAMESPACE)
    return cm is not None and cfg.elastic.nodepool_id in ((cm.get("data") or {}).get("status") or "")


def _pool_status(cfg: TestbedConfig) -> dict:
    k = kube(cfg)
    nodes = k.list("v1", "Node")
    pools: dict[str, dict] = {}
    for pool in (cfg.idc, cfg.elastic):
        members = [n for n in nodes if n["metadata"].get("labels", {}).get(NODEPOOL_LABEL) == pool.nodepool_id]
        ready = [n for n in members if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in n.get("status", {}).get("conditions") or [])]
        pools[pool.nodepool_id] = {"nodes": len(members), "ready": len(ready),
                                   "gpus_per_node": pool.gpus_per_node}
    pools[cfg.elastic.nodepool_id].update({"group": cfg.elastic.group, "min": cfg.elastic.min_nodes,
                                           "max": cfg.elastic.max_nodes})
    return {"pools": pools}


CONTROL_PLANE: list[Component] = [
    Component("etcd", COMPONENTS["etcd"].version, _etcd_proc,
              lambda c: _http_ok(f"http://127.0.0.1:{c.ports.etcd_client}/health"), 30, before=_etcd_fresh),
    Component("kube-apiserver", COMPONENTS["k8s"].version, _apiserver_proc,
              lambda c: _https_ok(f"{apiserver_url(c)}/readyz", c), 90),
    Component("kube-controller-manager", COMPONENTS["k8s"].version, _kcm_proc,
              lambda c: _https_ok(f"https://127.0.0.1:{c.ports.controller_manager}/healthz", c,
                                  client_cert=False), 60),
    Component("kube-scheduler", COMPONENTS["k8s"].version, _scheduler_proc,
              lambda c: _https_ok(f"https://127.0.0.1:{c.ports.scheduler}/healthz", c, client_cert=False), 60,
              after=_bootstrap),
    Component("kwok", COMPONENTS["kwok"].version, _kwok_proc, _nodes_ready, 60),
    Component("cluster-autoscaler", COMPONENTS["ca"].version, _ca_proc, _ca_ready, 90, stop_timeout_s=30,
              extra_status=_pool_status),
]

def all_components() -> list[Component]:
    """Every component, in start order: the control plane, the data plane, the object store."""
    return CONTROL_PLANE + dataplane.COMPONENTS + objectstore.COMPONENTS


def _table(cfg: TestbedConfig) -> ProcessTable:
    return ProcessTable(cfg.run_dir, cfg.log_dir)


def _component(name: str) -> Component:
    for comp in all_components():
        if comp.name == name:
            return comp
    raise TestbedError(f"no test bed component {name!r}; components: {', '.join(c.name for c in all_components())}")


def stop_component(cfg: TestbedConfig, name: str) -> bool:
    """Stop one running component (fault injection); True if it was running."""
    comp = _component(name)
    return _table(cfg).stop(comp.name, timeout=comp.stop_timeout_s)


def start_component(cfg: TestbedConfig, name: str) -> float:
    """Start one stopped component again and wait until it is ready; the seconds that took.

    Its ``before`` hook is not run (etcd's would wipe the cluster's data), nor its ``after``.
    """
    comp = _component(name)
    table = _table(cfg)
    t0 = time.monotonic()
    if not table.pid(comp.name):
        table.start(comp.make_proc(cfg))
    wait_until(lambda: comp.ready(cfg), timeout=comp.timeout_s, what=comp.name,
               died=lambda: table.exited_early(comp.name))
    return round(time.monotonic() - t0, 2)


def restart_component(cfg: TestbedConfig, name: str) -> float:
    """Stop one component and start it again (e.g. the kube-apiserver under a running flow);
    the seconds from the stop to ready again."""
    t0 = time.monotonic()
    stop_component(cfg, name)
    start_component(cfg, name)
    return round(time.monotonic() - t0, 2)


def _safe_ready(comp: Component, cfg: TestbedConfig) -> bool:
    try:
        return bool(comp.ready(cfg))
    except Exception:  # noqa: BLE001 - a probe failing means not ready
        return False


def up(cfg: TestbedConfig | None = None, *, log=print, components: list[Component] | None = None) -> dict:
    """Start every component (or only ``components``) that is not running; return seconds per
    component."""
    cfg = cfg or load_config()
    table = _table(cfg)
    running = [c.name for c in all_components() if table.pid(c.name)]
    if running and "etcd" not in running:
        down(cfg, log=log)  # half a test bed (e.g. after a crash) is torn down before a clean start
        running = []
    save_config(cfg)
    write_realism(cfg)
    pki.ensure_pki(cfg.pki_dir)
    pki.write_kubeconfig(cfg.kubeconfig, cfg.pki_dir, apiserver_url(cfg))
    timings: dict[str, float] = {}
    started = time.monotonic()
    for comp in components if components is not None else all_components():
        t0 = time.monotonic()
        if table.pid(comp.name) and _safe_ready(comp, cfg):
            log(f"[testbed] {comp.name}: already running (pid {table.pid(comp.name)})")
            continue
        try:
            if not table.pid(comp.name):
                proc = comp.make_proc(cfg)
                check_ports(comp.name, proc.ports)
                if comp.before:
                    comp.before(cfg)
                pid = table.start(proc)
                log(f"[testbed] {comp.name}: started pid {pid}")
            wait_until(lambda: comp.ready(cfg), timeout=comp.timeout_s, what=comp.name,
                       died=lambda: table.exited_early(comp.name))
            if comp.after:
                comp.after(cfg)
        except BaseException:
            log(f"[testbed] {comp.name} failed to start; stopping what this test bed started")
            down(cfg, log=lambda *_: None)
            raise
        timings[comp.name] = round(time.monotonic() - t0, 2)
        log(f"[testbed] {comp.name}: ready in {timings[comp.name]:.1f}s")
    timings["total"] = round(time.monotonic() - started, 2)
    log(f"[testbed] all components ready in {timings['total']:.1f}s; KUBECONFIG={cfg.kubeconfig}")
    return timings


def write_realism(cfg: TestbedConfig) -> Path:
    """``<state_dir>/realism.json``: the profile and every figure it applies (with sources), and the
    ``ack-gpu`` figures a ``fast`` run is projected onto. A run finds it beside the kubeconfig."""
    path = cfg.state_dir / REALISM_FILE
    doc = cfg.timings.document()
    doc["model_load_s"] = cfg.timings.model_load_s or cfg.emulator.load_delay_s  # what a replica waits, in all
    path.write_text(json.dumps(doc, indent=2))
    return path


def down(cfg: TestbedConfig | None = None, *, log=print) -> list[str]:
    """Stop everything ``up`` started, in reverse order; verify nothing is left listening."""
    cfg = cfg or load_config(saved=True)
    table = _table(cfg)
    stopped = []
    names = [c.name for c in all_components()]
    stray = [n for n in table.names() if n not in names]
    for comp in list(reversed(all_components())):
        if table.stop(comp.name, timeout=comp.stop_timeout_s):
            stopped.append(comp.name)
            log(f"[testbed] {comp.name}: stopped")
    for name in stray:
        if table.stop(name):
            stopped.append(name)
    strays = reap_strays(str(cfg.state_dir))
    if strays:
        log(f"[testbed] stopped {len(strays)} stray process(es) of this test bed: {strays}")
    busy = []
    for comp in all_components():
        try:
            ports = comp.make_proc(cfg).ports
        except TestbedError:
            continue
        busy += [p for p in ports if not port_free(p)]
    if busy and stopped:
        time.sleep(1.0)
        busy = [p for p in busy if not port_free(p)]
    if busy:
        log(f"[testbed] warning: ports still in use after down: {busy} (not started by this test bed?)")
    return stopped


def status(cfg: TestbedConfig | None = None) -> dict:
    cfg = cfg or load_config(saved=True)
    table = _table(cfg)
    comps = []
    extra: dict = {}
    for comp in all_components():
        pid = table.pid(comp.name)
        ready = False
        if pid:
            try:
                ready = bool(comp.ready(cfg))
            except Exception:  # noqa: BLE001 - a probe failing means not ready
                ready = False
        comps.append({"name": comp.name, "ready": ready, "pid": pid, "version": comp.version,
                      "log": str(table.log_file(comp.name))})
        if ready and comp.extra_status:
            try:
                extra.update(comp.extra_status(cfg))
            except Exception as exc:  # noqa: BLE001
                extra.setdefault("errors", []).append(f"{comp.name}: {exc}")
    out = {
        "ready": all(c["ready"] for c in comps),
        "profile": cfg.profile,
        "realism": {f.name: f.value for f in cfg.timings.figures()},
        "state_dir": str(cfg.state_dir),
        "kubeconfig": str(cfg.kubeconfig),
        "apiserver": apiserver_url(cfg),
        "components": comps,
        "pools": extra.pop("pools", {
            cfg.idc.nodepool_id: {"nodes": None, "ready": None},
            cfg.elastic.nodepool_id: {"nodes": None, "group": cfg.elastic.group, "min": cfg.elastic.min_nodes,
                                      "max": cfg.elastic.max_nodes}}),
    }
    out.update(extra)
    return out


def logs(cfg: TestbedConfig | None = None, name: str | None = None, lines: int = 40) -> str:
    cfg = cfg or load_config(saved=True)
    table = _table(cfg)
    names = [name] if name else [c.name for c in all_components()]
    chunks = []
    for n in names:
        path = table.log_file(n)
        if not path.exists():
            if name:
                raise TestbedError(f"no log for component {n!r}; components: {', '.join(c.name for c in all_components())}")
            continue
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        chunks.append(f"==> {path} <==\n" + "\n".join(tail))
    return "\n\n".join(chunks)

