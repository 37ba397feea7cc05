"""The real KServe controller (``github.com/kserve/kserve`` ``cmd/manager``) on the test bed.

Selected with ``tidegate testbed up --set kserve.controller=upstream``; the default is the
daemon's emulation (``testbed.kserve``). The test-bed daemon then starts the manager as its
child process (stopped with it) and leaves InferenceServices to it; it still acts as the
kubelet, vLLM and gateway of the predictor pods.

- Build: the module's own go.mod must be the main module, because it pins
  controller-runtime with a ``replace`` (v0.19.7) that ``go get`` into another module ignores
  (keda v2.16.1 then fails with ``undefined: webhook.Validator``). So the module is
  downloaded at its exact version (the proxy refuses the version list), copied to a writable
  directory and built there, niced; about a minute with a warm module cache, a few with a
  cold one. Cached at ``<cache>/bin/kserve-<version>/manager``.
- Install (before the daemon starts): every ``serving.kserve.io`` CRD of that version, the
  ``kserve`` namespace and its ``inferenceservice-config`` ConfigMap (KServe's own, with
  ``deploy.defaultDeploymentMode: RawDeployment`` and ``ingress.disableIngressCreation``).
- Run: ``POD_NAMESPACE=kserve``; metrics off; health probe and webhook server on loopback
  ports of the test bed; the webhook server's certificate is the test bed's serving cert
  (``testbed/pki.py``), found under ``$TMPDIR/k8s-webhook-server/serving-certs``. KServe's
  webhooks are served but not registered with the apiserver (no defaulting/validation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from testbed.build import (
    KSERVE_MODULE,
    KSERVE_VERSION,
    BuildError,
    cache_dir,
    check_go,
    kserve_source,
)
from testbed.config import TestbedConfig

NAMESPACE = "kserve"
CONFIGMAP = "inferenceservice-config"


def bin_dir() -> Path:
    return cache_dir() / "bin" / f"kserve-{KSERVE_VERSION}"


def ensure_manager(log=print) -> Path:
    """The KServe manager binary, built once (see the module docstring)."""
    out = bin_dir() / "manager"
    if (bin_dir() / ".complete").exists() and out.exists():
        return out
    check_go()
    work = cache_dir() / "kserve-build" / KSERVE_VERSION
    src = work / "src"
    if not src.exists():
        shutil.copytree(kserve_source("kserve manager"), src)
        for p in [src, *src.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    log(f"[testbed] kserve-controller: building {KSERVE_MODULE}@{KSERVE_VERSION} cmd/manager (a few minutes)")
    bin_dir().mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    proc = subprocess.run(["nice", "-n", "19", "go", "build", "-o", str(out), "./cmd/manager"], cwd=src, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise BuildError(f"kserve manager: go build failed: {proc.stderr.strip()[-400:]}")
    (bin_dir() / ".complete").write_text(KSERVE_VERSION)
    return out


def isvc_config(source: Path) -> dict:
    """KServe's own ``inferenceservice-config`` with RawDeployment and no Ingress objects."""
    doc = yaml.safe_load((source / "config" / "configmap" / "inferenceservice.yaml").read_text())
    data = doc["data"]
    data.pop("_example", None)
    data["deploy"] = json.dumps({"defaultDeploymentMode": "RawDeployment"})
    ingress = json.loads(data["ingress"])
    ingress["disableIngressCreation"] = True
    data["ingress"] = json.dumps(ingress)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
            "data": data}


def tmp_dir(cfg: TestbedConfig) -> Path:
    return cfg.state_dir / "kserve-tmp"


def install(cfg: TestbedConfig, log=print) -> None:
    """CRDs, namespace, ConfigMap and the webhook server's certificate (before the daemon)."""
    from testbed.procs import kube

    ensure_manager(log)
    source = kserve_source("kserve manager")
    k = kube(cfg)
    for crd in sorted((source / "config" / "crd" / "full").glob("serving.kserve.io_*.yaml")):
        k.apply(yaml.safe_load(crd.read_text()), field_manager="tidegate-testbed", force=True)
    k.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            field_manager="tidegate-testbed", force=True)
    k.apply(isvc_config(source), field_manager="tidegate-testbed", force=True)
    certs = tmp_dir(cfg) / "k8s-webhook-server" / "serving-certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg.pki_dir / "metrics-adapter.crt", certs / "tls.crt")
    shutil.copyfile(cfg.pki_dir / "metrics-adapter.key", certs / "tls.key")


def start(cfg: TestbedConfig) -> subprocess.Popen:
    """Start the manager as a child of the calling process (the daemon), logging next to it."""
    argv = [str(bin_dir() / "manager"), f"--kubeconfig={cfg.kubeconfig}", "--metrics-addr=0",
            f"--health-probe-addr=127.0.0.1:{cfg.ports.kserve_probe}", f"--webhook-port={cfg.ports.kserve_webhook}",
            "--zap-encoder=console"]
    env = dict(os.environ, POD_NAMESPACE=NAMESPACE, TMPDIR=str(tmp_dir(cfg)))
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    log = open(cfg.log_dir / "kserve-controller.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def ready(cfg: TestbedConfig) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.ports.kserve_probe}/readyz", timeout=2) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


if __name__ == "__main__":  # pragma: no cover - `python -m testbed.kserve_upstream` builds it
    print(ensure_manager(lambda m: print(m, file=sys.stderr)))
