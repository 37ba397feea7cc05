"""Registers the data-plane components of the test bed (after the control plane):

- ``testbed-daemon``: KServe reconciler, ResourcePolicy scheduler extender + controller, the
  kubelet for predictor pods with their vLLM emulators, and the gateway (``testbed.daemon``);
  before it starts, the real InferenceService CRD (from the KServe Go module) and the
  ResourcePolicy CRD are installed. The kube-scheduler calls its extender (see
  ``testbed.cluster``); no admission webhook is registered.
- ``metrics-adapter``: the custom.metrics.k8s.io aggregated API (``testbed/go/metrics-adapter``,
  built on sigs.k8s.io/custom-metrics-apiserver), registered through an APIService whose
  Service is an ExternalName to 127.0.0.1 (the aggregator resolves it to loopback).
- the object store (SeaweedFS + the OSS-dialect adapter), from ``testbed.objectstore``.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from testbed.build import COMPONENTS, ensure_kserve_crd, require_binary
from testbed.config import TestbedConfig
from testbed.errors import TestbedError
from testbed.procs import Component, Proc, kube

CRD_DIR = Path(__file__).resolve().parent / "crds"
METRICS_NS = "custom-metrics"


def _wait_established(cfg: TestbedConfig, name: str, timeout: float = 30) -> None:
    k = kube(cfg)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = k.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
        conds = (crd or {}).get("status", {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            k.invalidate_discovery()
            return
        time.sleep(0.2)
    raise TestbedError(f"CRD {name} not Established after {timeout:.0f}s")


def _install_crds(cfg: TestbedConfig) -> None:
    k = kube(cfg)
    docs = [yaml.safe_load(ensure_kserve_crd().read_text())]
    docs += [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
    for crd in docs:
        k.apply(crd, field_manager="tidegate-testbed", force=True)
    for crd in docs:
        _wait_established(cfg, crd["metadata"]["name"])
    if cfg.kserve.controller == "upstream":
        from testbed import kserve_upstream

        kserve_upstream.install(cfg)


def _daemon_proc(cfg: TestbedConfig) -> Proc:
    return Proc("testbed-daemon", [sys.executable, "-m", "testbed.daemon", "--config",
                                   str(cfg.state_dir / "config.json")],
                [cfg.ports.daemon, cfg.ports.gateway])


def _daemon_ready(cfg: TestbedConfig) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.ports.daemon}/healthz", timeout=2) as r:  # noqa: S310
        return r.status == 200


def _daemon_status(cfg: TestbedConfig) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.ports.daemon}/v1/status", timeout=2) as r:  # noqa: S310
        doc = json.loads(r.read())
    return {"gateway": doc["gateway"]}


def _adapter_proc(cfg: TestbedConfig) -> Proc:
    k = cfg.pki_dir
    return Proc("metrics-adapter", [
        str(require_binary("metrics-adapter", "tidegate-metrics-adapter")),
        f"--secure-port={cfg.ports.metrics_adapter}", "--bind-address=127.0.0.1",
        f"--tls-cert-file={k / 'metrics-adapter.crt'}", f"--tls-private-key-file={k / 'metrics-adapter.key'}",
        f"--lister-kubeconfig={cfg.kubeconfig}", f"--authentication-kubeconfig={cfg.kubeconfig}",
        f"--authorization-kubeconfig={cfg.kubeconfig}", f"--source=http://127.0.0.1:{cfg.ports.daemon}",
        "--v=1",
    ], [cfg.ports.metrics_adapter])


def _register_apiservice(cfg: TestbedConfig) -> None:
    k = kube(cfg)
    k.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": METRICS_NS}},
            field_manager="tidegate-testbed", force=True)
    k.apply({"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "custom-metrics-apiserver", "namespace": METRICS_NS},
             "spec": {"type": "ExternalName", "externalName": "127.0.0.1"}}, field_manager="tidegate-testbed", force=True)
    ca = base64.b64encode((cfg.pki_dir / "ca.crt").read_bytes()).decode()
    for version, prio in (("v1beta2", 200), ("v1beta1", 100)):
        k.apply({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                 "metadata": {"name": f"{version}.custom.metrics.k8s.io"},
                 "spec": {"group": "custom.metrics.k8s.io", "version": version, "caBundle": ca,
                          "service": {"name": "custom-metrics-apiserver", "namespace": METRICS_NS,
                                      "port": cfg.ports.metrics_adapter},
                          "groupPriorityMinimum": 100, "versionPriority": prio}},
                field_manager="tidegate-testbed", force=True)


def _adapter_ready(cfg: TestbedConfig) -> bool:
    svc = kube(cfg).get("apiregistration.k8s.io/v1", "APIService", "v1beta2.custom.metrics.k8s.io")
    if svc is None:
        _register_apiservice(cfg)
        return False
    return any(c["type"] == "Available" and c["status"] == "True"
               for c in svc.get("status", {}).get("conditions") or [])


COMPONENTS: list[Component] = [
    Component("testbed-daemon", "tidegate", _daemon_proc, _daemon_ready, 60, before=_install_crds,
              extra_status=_daemon_status),
    Component("metrics-adapter", COMPONENTS["metrics-adapter"].version, _adapter_proc, _adapter_ready, 60),
]
