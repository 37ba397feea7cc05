"""Build and cache the test bed's Go binaries from upstream Go modules.

Each upstream tool has its own wrapper Go module under ``testbed/go/<component>`` (its
``go.mod``/``go.sum`` are committed; the upstream source comes from the Go module proxy), so
that their dependency versions never pull each other. Binaries land in the cache directory
``$TIDEGATE_CACHE_DIR`` (default ``~/.cache/tidegate``) under ``bin/<component>-<key>/``, where
the key is the component's version plus a hash of its go.mod/go.sum: a fresh clone with the
same wrapper modules reuses them. A build writes ``.complete`` only after every binary of the
component linked, so a half-built directory is detected and rebuilt; Go's own build cache
makes a rebuild after an interruption resume where it stopped.

Invariants: nothing here is committed into the checkout; every failure surfaces as a
``BuildError`` whose message is one line naming the cause and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import BuildError

GO_DIR = Path(__file__).resolve().parent / "go"


def cache_dir() -> Path:
    return Path(os.environ.get("TIDEGATE_CACHE_DIR", Path.home() / ".cache" / "tidegate"))


def _k8s_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


@dataclass(frozen=True)
class Component:
    """One wrapper module and the binaries built from it."""

    name: str
    version: str
    binaries: dict[str, str]  # binary name -> Go package path
    ldflags: str = "-s -w"
    tags: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def module_dir(self) -> Path:
        return GO_DIR / self.name

    def key(self) -> str:
        digest = hashlib.sha256()
        for fname in ("go.mod", "go.sum"):
            path = self.module_dir / fname
            if path.exists():
                digest.update(path.read_bytes())
        for src in sorted(self.module_dir.glob("*.go")):
            digest.update(src.read_bytes())
        digest.update(self.ldflags.encode() + self.tags.encode())
        return f"{self.version}-{digest.hexdigest()[:10]}"

    def bin_dir(self) -> Path:
        return cache_dir() / "bin" / f"{self.name}-{self.key()}"

    def is_built(self) -> bool:
        d = self.bin_dir()
        return (d / ".complete").exists() and all((d / b).exists() for b in self.binaries)

    def path(self, binary: str) -> Path:
        return self.bin_dir() / binary


K8S_VERSION = "v1.36.3"

COMPONENTS: dict[str, Component] = {
    "etcd": Component(
        name="etcd",
        version="v3.6.16",
        binaries={"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    "k8s": Component(
        name="k8s",
        version=K8S_VERSION,
        binaries={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
        ldflags=_k8s_ldflags(K8S_VERSION),
    ),
    "kwok": Component(
        name="kwok",
        version="v0.8.0",
        binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ),
    "ca": Component(
        name="ca",
        version="v1.33.0-kwok",
        binaries={"cluster-autoscaler": "k8s.io/autoscaler/cluster-autoscaler"},
        tags="kwok",
        env={"GONOSUMDB": "k8s.io/autoscaler"},
    ),
    "metrics-adapter": Component(
        name="metrics-adapter",
        version="v0.1.0",
        binaries={"tidegate-metrics-adapter": "."},
    ),
}

# Peer tools that `make bench-staging` measures tidegate against. They are not part of the test
# bed, so the default build skips them; the bench builds them on first use with `build()`.
BENCH_COMPONENTS: dict[str, Component] = {
    "rclone": Component(
        name="rclone",
        version="v1.76.0",
        binaries={"rclone": "github.com/rclone/rclone"},
    ),
    "s5cmd": Component(
        name="s5cmd",
        version="v2.3.0",
        binaries={"s5cmd": "github.com/peak/s5cmd/v2"},
    ),
}


def _go_env(comp: Component) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -mod=mod"})
    env.update(comp.env)
    return env


def check_go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("the Go toolchain is missing: install Go >= 1.26 and put `go` on PATH, then run `make testbed-build`")
    out = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout.strip()
    return out


def _explain(stderr: str, comp: Component) -> str:
    """Turn go's multi-line failure into one line naming the cause and the fix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "403 Forbidden" in ln or "not available" in ln or "410 Gone" in ln:
            mod = ln.split(":")[1].strip() if ln.count(":") > 1 else ln
            return (f"{comp.name}: the Go module proxy refused {mod}; pin a version the proxy serves in "
                    f"{comp.module_dir}/go.mod and run `make testbed-build` again")
    for ln in lines:
        if "requires go >=" in ln or "toolchain" in ln and "not available" in ln:
            return f"{comp.name}: {ln}; install a newer Go or set GOTOOLCHAIN to an approved version"
    for ln in lines:
        if "dial tcp" in ln or "no such host" in ln or "timeout" in ln:
            return f"{comp.name}: cannot reach the Go module proxy ({ln[:160]}); check GOPROXY and the network"
    last = lines[-1] if lines else "go build failed"
    return f"{comp.name}: go build failed: {last[:240]}; see the log above, fix, and run `make testbed-build` again"


def build(comp: Component, *, force: bool = False, log=sys.stderr) -> Path:
    """Build one component into the cache unless an intact build is already there."""
    if comp.is_built() and not force:
        print(f"[testbed-build] {comp.name} {comp.version}: cached at {comp.bin_dir()}", file=log, flush=True)
        return comp.bin_dir()
    check_go()
    if not (comp.module_dir / "go.mod").exists():
        raise BuildError(f"{comp.name}: wrapper module {comp.module_dir}/go.mod is missing; restore it from git")
    out_dir = comp.bin_dir()
    marker = out_dir / ".complete"
    if out_dir.exists() and not marker.exists():
        print(f"[testbed-build] {comp.name}: half-built cache {out_dir} found, rebuilding", file=log, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    env = _go_env(comp)
    started = time.monotonic()
    for binary, pkg in comp.binaries.items():
        print(f"[testbed-build] {comp.name}: building {binary} ({pkg}) ...", file=log, flush=True)
        cmd = ["go", "build", "-ldflags", comp.ldflags, "-o", str(out_dir / f".{binary}.tmp")]
        if comp.tags:
            cmd += ["-tags", comp.tags]
        cmd.append(pkg)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=comp.module_dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        captured: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            captured.append(line)
            if not line.startswith("go: downloading"):
                print(f"    {line.rstrip()}", file=log, flush=True)
        if proc.wait() != 0:
            raise BuildError(_explain("".join(captured), comp))
        os.replace(out_dir / f".{binary}.tmp", out_dir / binary)
        print(f"[testbed-build] {comp.name}: {binary} done in {time.monotonic() - t0:.0f}s", file=log, flush=True)
    if comp.name == "kwok":
        _copy_kwok_stages(comp, out_dir, env)
    marker.write_text(f"{comp.version}\n")
    print(f"[testbed-build] {comp.name} built in {time.monotonic() - started:.0f}s -> {out_dir}", file=log, flush=True)
    return out_dir


def _copy_kwok_stages(comp: Component, out_dir: Path, env: dict[str, str]) -> None:
    """kwok needs Stage objects; take its own 'fast' set from the module it was built from."""
    proc = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"], cwd=comp.module_dir,
                          env=env, capture_output=True, text=True, check=False)
    src = Path(proc.stdout.strip()) / "kustomize" / "stage"
    files = [src / "node" / "fast" / "node-initialize.yaml",
             src / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
             src / "pod" / "fast" / "pod-ready.yaml",
             src / "pod" / "fast" / "pod-complete.yaml",
             src / "pod" / "fast" / "pod-delete.yaml"]
    missing = [str(f) for f in files if not f.exists()]
    if proc.returncode != 0 or missing:
        raise BuildError(f"kwok: stage files not found in the kwok module ({missing[:1] or proc.stderr.strip()[:120]})")
    docs = [f.read_text().strip().removeprefix("---").strip() for f in files]
    (out_dir / "stages").mkdir(exist_ok=True)
    for f, doc in zip(files, docs):
        (out_dir / "stages" / f.name).write_text(doc + "\n")


def build_all(names: list[str] | None = None, *, force: bool = False) -> None:
    print(f"[testbed-build] {check_go()}; cache {cache_dir()}", file=sys.stderr, flush=True)
    for name in names or list(COMPONENTS):
        build(COMPONENTS[name], force=force)
    if not names:
        print(f"[testbed-build] kserve CRD: {ensure_kserve_crd()}", file=sys.stderr, flush=True)


KSERVE_MODULE = "github.com/kserve/kserve"
KSERVE_VERSION = "v0.16.0"
KSERVE_CRD = "config/crd/full/serving.kserve.io_inferenceservices.yaml"


def kserve_source(what: str) -> Path:
    """The KServe Go module's source directory (``go mod download``, the module cache)."""
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    proc = subprocess.run(["go", "mod", "download", "-json", f"{KSERVE_MODULE}@{KSERVE_VERSION}"],
                          capture_output=True, text=True, env=env, check=False, cwd=cache_dir().parent)
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = {"Error": proc.stderr.strip() or "no output"}
    if info.get("Error") or not info.get("Dir"):
        raise BuildError(f"{what}: `go mod download {KSERVE_MODULE}@{KSERVE_VERSION}` failed: "
                         f"{str(info.get('Error'))[:200]}; check the Go module proxy")
    return Path(info["Dir"])


def ensure_kserve_crd() -> Path:
    """The real InferenceService CRD, taken from the KServe Go module and cached."""
    dst = cache_dir() / "crds" / f"kserve-{KSERVE_VERSION}" / Path(KSERVE_CRD).name
    if dst.exists():
        return dst
    check_go()
    src = kserve_source("kserve CRD") / KSERVE_CRD
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def require_binary(component: str, binary: str) -> Path:
    comp = COMPONENTS[component]
    if not comp.is_built():
        raise BuildError(f"{binary} is not built (cache {comp.bin_dir()}); run `make testbed-build` first")
    return comp.path(binary)


if __name__ == "__main__":  # pragma: no cover - exercised by `make testbed-build`
    try:
        build_all(sys.argv[1:] or None, force=os.environ.get("TIDEGATE_FORCE_BUILD") == "1")
    except BuildError as exc:
        print(f"testbed-build: {exc}", file=sys.stderr)
        sys.exit(2)
