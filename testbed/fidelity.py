"""Which parts of the test bed are the upstream component and which are emulated.

``tidegate testbed status --json`` lists, under ``components``, every process of the test
bed with ``upstream`` (true: the upstream project's own binary, built from its Go module or
its package; false: tidegate's code) and ``emulates`` (what ACK / the real cluster runs in
its place), then one entry per part that the test-bed daemon emulates inside its process
(``provided_by`` names that process; its ``ready`` and ``pid`` are the process's). The
long form is docs/twin-fidelity.md.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# process name -> (upstream?, what it stands for on ACK)
PROCESSES: dict[str, tuple[bool, str]] = {
    "etcd": (True, "etcd of the managed control plane"),
    "kube-apiserver": (True, "kube-apiserver"),
    "kube-controller-manager": (True, "kube-controller-manager (Deployments, ReplicaSets, HPA)"),
    "kube-scheduler": (True, "ACK's kube-scheduler; its ResourcePolicy plugin is the daemon's extender"),
    "kwok": (True, "kubelets of the IDC and elastic GPU nodes (fake nodes, no containers)"),
    "cluster-autoscaler": (True, "ACK's cluster-autoscaler (upstream, kwok cloud provider)"),
    "testbed-daemon": (False, ("KServe controller, ResourcePolicy plugin, kubelet and vLLM of predictor pods, "
                               "ingress gateway")),
    "metrics-adapter": (False, ("ack-alibaba-cloud-metrics-adapter (built on the upstream "
                                "custom-metrics-apiserver library)")),
    "seaweedfs": (True, "OSS storage (SeaweedFS, an S3 store)"),
    "oss-adapter": (False, "OSS's REST dialect in front of SeaweedFS"),
}

# parts emulated inside the daemon: name -> what the upstream one is
EMULATED_IN_DAEMON: dict[str, str] = {
    "kserve-controller": "KServe v0.13-v0.16 RawDeployment reconciler (testbed/kserve.py), not the KServe "
                         "manager",
    "resourcepolicy": "ACK scheduler's ResourcePolicy plugin, as a kube-scheduler extender "
                      "(testbed/resourcepolicy.py)",
    "predictor-kubelet": "the kubelet of predictor pods (status, readiness after the model-load delay)",
    "vllm": "vLLM's OpenAI server and metrics (testbed/emulator.py latency model)",
    "dcgm-metrics": "DCGM_CUSTOM_PROCESS_SM_UTIL per pod, from the emulator's load",
    "gateway": "the ingress gateway routing the service Host to Ready pods",
}


UPSTREAM_KSERVE = "the KServe manager (github.com/kserve/kserve cmd/manager), run by the test-bed daemon"


def components(processes: list[Obj], *, kserve_upstream: bool = False) -> list[Obj]:
    """``processes`` (cluster.status's entries) with ``upstream``/``emulates``, then the daemon's
    parts; with ``kserve_upstream`` (``kserve.controller: upstream``) the KServe controller is
    the real one."""
    out = []
    daemon: Obj | None = None
    for proc in processes:
        upstream, emulates = PROCESSES.get(proc["name"], (False, "tidegate's own"))
        out.append({**proc, "upstream": upstream, "emulates": emulates})
        if proc["name"] == "testbed-daemon":
            daemon = proc
    for name, what in EMULATED_IN_DAEMON.items():
        entry = {"name": name, "ready": bool(daemon and daemon["ready"]), "pid": (daemon or {}).get("pid"),
                 "version": "emulated", "log": (daemon or {}).get("log"), "upstream": False,
                 "emulates": what, "provided_by": "testbed-daemon"}
        if name == "kserve-controller" and kserve_upstream:
            from testbed.build import KSERVE_VERSION

            entry.update(version=KSERVE_VERSION, upstream=True, emulates=UPSTREAM_KSERVE)
        out.append(entry)
    return out
