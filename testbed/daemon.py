"""The test-bed daemon: everything that makes KWOK's empty pods behave like a served model.

One process (``python -m testbed.daemon``), one asyncio loop, watch threads feeding it:

- **KServe RawDeployment reconciler** (``testbed.kserve``): InferenceService -> Deployment,
  Service (and an HPA unless ``autoscalerClass: external``), status conditions from the
  Deployment. With ``kserve.controller: upstream`` the real KServe manager runs instead, as
  the daemon's child process (``testbed.kserve_upstream``).
- **ResourcePolicy** (``testbed.resourcepolicy``): the kube-scheduler's extender
  (``POST /scheduler/filter`` and ``/scheduler/prioritize`` on the daemon API) that enforces
  the unit order at scheduling time, and a controller that writes ``pod-deletion-cost`` and
  the unit's podLabels on bound pods. Pods carry no node affinity for it.
- **Kubelet for predictor pods**: KWOK's pod-ready stage skips pods labelled
  ``serving.kserve.io/inferenceservice``; for each such pod bound to a node the daemon starts
  a vLLM emulator replica (``testbed.emulator``), reports the pod Running at once and Ready
  only when the replica's ``/health`` answers (after the model-load delay). An image whose
  registry is ``registry.invalid`` or whose tag is ``does-not-exist`` cannot be pulled: the
  pod reports ``ImagePullBackOff``, as a kubelet would.
- **Gateway** (``testbed.gateway``): routes ``Host: <isvc>-<namespace>.example.com`` to the
  Ready replicas.
- **Daemon API** on loopback: ``/healthz``, ``/v1/status``, ``/v1/pod-metrics?namespace=``
  (read by the custom-metrics adapter), ``POST /v1/faults`` (fault injection per pod).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

from tasks.errors import ClusterError
from tasks.kube import Kube
from tasks.names import NODEPOOL_LABEL
from testbed import kserve, kserve_upstream
from testbed import resourcepolicy as rp
from testbed.config import EmulatorModel, TestbedConfig
from testbed.emulator import ReplicaPool
from testbed.gateway import Gateway
from testbed.podrunner import PodRunner, wants

log = logging.getLogger("testbed.daemon")
FIELD_MANAGER = "kserve-testbed"
UNPULLABLE = ("registry.invalid/",)

Obj = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: Obj) -> str:
    m = obj["metadata"]
    return f"{m.get('namespace', '')}/{m['name']}"


def image_pullable(image: str) -> bool:
    return not (image.startswith(UNPULLABLE) or image.endswith(":does-not-exist"))


def kubelet_model(cfg: TestbedConfig) -> EmulatorModel:
    """The emulator's model with the realism profile's model load (weights + engine start) as its
    load delay; the ``fast`` profile keeps ``emulator.load_delay_s``."""
    load_s = cfg.timings.model_load_s
    return cfg.emulator if load_s is None else cfg.emulator.model_copy(update={"load_delay_s": load_s})


class Daemon:
    def __init__(self, cfg: TestbedConfig):
        self.cfg = cfg
        self.kube = Kube.connect(kubeconfig=cfg.kubeconfig)
        self.timings = cfg.timings
        self.pool = ReplicaPool(kubelet_model(cfg), base_port=cfg.ports.replica_base)
        self.metric_history: deque[tuple[float, dict]] = deque()
        self.pulls: set[asyncio.Task] = set()
        self.pulled: set[tuple[str, str]] = set()  # (node, image) pulled once
        self.gateway = Gateway(port=cfg.ports.gateway)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.stop = threading.Event()
        self.isvcs: dict[str, Obj] = {}
        self.deployments: dict[str, Obj] = {}
        self.pods: dict[str, Obj] = {}
        self.nodes: dict[str, dict[str, str]] = {}
        self.policies: dict[str, Obj] = {}
        self.replica_pods: dict[str, Obj] = {}  # pod key -> pod (those with a replica)
        self.ready_reported: set[str] = set()
        # pods the extender sent to a unit and not yet seen bound: pod uid -> (time, policy key, unit)
        self.reservations: dict[str, tuple[float, str, int]] = {}
        self.lock = threading.Lock()
        self.synced: set[str] = set()
        self.pod_ips: dict[str, str] = {}
        self.upstream_kserve = cfg.kserve.controller == "upstream"
        self.kserve_proc = None
        self.podrunner = PodRunner(self.kube, cfg.state_dir, self._call)  # generic pods as local processes

    # -- watch threads -------------------------------------------------------------------
    def _emit(self, kind: str, etype: str, obj: Obj) -> None:
        # apply the event to the caches right away (the webhook reads them from its own thread)
        with self.lock:
            cache = {"InferenceService": self.isvcs, "Deployment": self.deployments, "Pod": self.pods,
                     "ResourcePolicy": self.policies}.get(kind)
            if kind == "Node":
                if etype == "DELETED":
                    self.nodes.pop(obj["metadata"]["name"], None)
                else:
                    self.nodes[obj["metadata"]["name"]] = obj["metadata"].get("labels") or {}
            elif cache is not None:
                if etype == "DELETED":
                    cache.pop(_key(obj), None)
                else:
                    cache[_key(obj)] = obj
        assert self.loop is not None and self.queue is not None
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, etype, obj))

    # -- event handling ------------------------------------------------------------------
    async def _call(self, fn, *args, **kw):
        assert self.loop is not None
        return await self.loop.run_in_executor(None, lambda: fn(*args, **kw))

    async def handle(self, kind: str, etype: str, obj: Obj) -> None:
        if self.upstream_kserve and kind in ("InferenceService", "Deployment"):
            if kind == "InferenceService":
                self.refresh_routes()
            return  # the real KServe manager reconciles them (testbed.kserve_upstream)
        if kind == "InferenceService" and etype != "DELETED":
            if obj["metadata"].get("deletionTimestamp"):
                return  # being deleted (foreground: the GC removes the Deployment first): do not re-create it
            await self.reconcile_isvc(obj)
        elif kind == "Deployment":
            owner = next((o for o in obj["metadata"].get("ownerReferences") or []
                          if o.get("kind") == "InferenceService"), None)
            if owner:
                isvc = self.isvcs.get(f"{obj['metadata']['namespace']}/{owner['name']}")
                if isvc:
                    await self.update_isvc_status(isvc)
        elif kind == "Pod":
            await self.handle_pod(etype, obj)

    async def reconcile_isvc(self, isvc: Obj) -> None:
        ns = isvc["metadata"]["namespace"]
        try:
            dep = kserve.deployment_for(isvc)
        except ValueError as exc:
            await self._call(self.kube.apply_status, {**_isvc_ref(isvc), "status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "InvalidSpec", "message": str(exc),
                 "lastTransitionTime": _now()}]}}, field_manager=FIELD_MANAGER)
            return
        existing = self.deployments.get(f"{ns}/{dep['metadata']['name']}")
        if existing:
            # like KServe, never fight the HPA over replicas
            dep["spec"]["replicas"] = existing.get("spec", {}).get("replicas", 1)
        else:
            dep["spec"]["replicas"] = 1
        await self._call(self.kube.apply, dep, field_manager=FIELD_MANAGER)
        await self._call(self.kube.apply, kserve.service_for(isvc), field_manager=FIELD_MANAGER)
        hpa_name = kserve.predictor_name(isvc)
        if kserve.wants_hpa(isvc):
            await self._call(self.kube.apply, kserve.hpa_for(isvc), field_manager=FIELD_MANAGER)
        else:
            await self._call(self.kube.delete, "autoscaling/v2", "HorizontalPodAutoscaler", hpa_name, ns)
        await self.update_isvc_status(isvc)
        self.refresh_routes()

    async def update_isvc_status(self, isvc: Obj) -> None:
        ns = isvc["metadata"]["namespace"]
        dep = self.deployments.get(f"{ns}/{kserve.predictor_name(isvc)}")
        status = kserve.status_for(isvc, dep, _now())
        old = (self.isvcs.get(_key(isvc)) or {}).get("status") or {}
        if _conditions_equal(old, status):
            return
        try:
            await self._call(self.kube.apply_status, {**_isvc_ref(isvc), "status": status},
                             field_manager=FIELD_MANAGER)
        except ClusterError as exc:
            log.info("isvc status %s: %s", _key(isvc), exc)

    async def handle_pod(self, etype: str, pod: Obj) -> None:
        key = _key(pod)
        labels = pod["metadata"].get("labels") or {}
        deleting = etype == "DELETED" or pod["metadata"].get("deletionTimestamp")
        if etype != "DELETED" and pod["spec"].get("nodeName"):
            await self.apply_policy_to_bound_pod(pod)
        if wants(pod):
            await self.podrunner.handle(etype, pod)
            return
        if kserve.ISVC_LABEL not in labels:
            return
        if deleting:
            if key in self.replica_pods:
                self.replica_pods.pop(key, None)
                self.ready_reported.discard(key)
                self.refresh_routes()
                await self.pool.remove(key)
            return
        if not pod["spec"].get("nodeName") or key in self.replica_pods:
            return
        container = pod["spec"]["containers"][0]
        if not image_pullable(container.get("image", "")):
            await self._pod_status(pod, running=False, ready=False, waiting=("ImagePullBackOff",
                                   f'Back-off pulling image "{container.get("image")}"'))
            return
        served, root = kserve.served_model(container)
        self.replica_pods[key] = pod
        image_on_node = (pod["spec"]["nodeName"], container.get("image", ""))
        if self.timings.image_pull_s > 0 and image_on_node not in self.pulled \
                and not self._image_cached_on(pod["spec"]["nodeName"]):  # own task: the loop goes on
            task = asyncio.create_task(self._pull_then_start(pod, served, root, labels))
            self.pulls.add(task)
            task.add_done_callback(self.pulls.discard)
            return
        # the emulator behaves like the image tag's vLLM version with the command's engine flags
        await self.pool.add(key, served_model_name=served, model_root=root, labels=labels,
                            image=container.get("image"),
                            argv=[*(container.get("command") or []), *(container.get("args") or [])])
        await self._pod_status(pod, running=True, ready=False)

    def _image_cached_on(self, node_name: str) -> bool:
        """realism ``idc_image=cached``: the IDC pool's nodes already hold the image (no pull)."""
        if self.timings.idc_image != "cached":
            return False
        return self.nodes.get(node_name, {}).get(NODEPOOL_LABEL) == self.cfg.idc.nodepool_id

    async def _pull_then_start(self, pod: Obj, served: str, root: str, labels: dict) -> None:
        try:
            if not await self._pull_image(pod):
                return
            container = pod["spec"]["containers"][0]
            await self.pool.add(_key(pod), served_model_name=served, model_root=root, labels=labels,
                                image=container.get("image"),
                                argv=[*(container.get("command") or []), *(container.get("args") or [])])
            await self._pod_status(pod, running=True, ready=False)
            await self._kubelet_event(pod, "Started", "Started container " + pod["spec"]["containers"][0]["name"])
        except Exception:  # noqa: BLE001 - a task's exception would otherwise vanish
            log.exception("starting %s after its image pull", _key(pod))

    async def _pull_image(self, pod: Obj) -> bool:
        """The realism profile's image pull: the pod waits in ContainerCreating for ``image_pull_s``
        between the kubelet's Pulling and Pulled events. False if the pod went away meanwhile."""
        key, image = _key(pod), pod["spec"]["containers"][0].get("image", "")
        await self._pod_status(pod, running=False, ready=False, waiting=("ContainerCreating", ""))
        await self._kubelet_event(pod, "Pulling", f'Pulling image "{image}"')
        await asyncio.sleep(self.timings.image_pull_s)
        if self.replica_pods.get(key) is not pod:
            return False
        self.pulled.add((pod["spec"]["nodeName"], image))  # the node's image cache (IfNotPresent)
        await self._kubelet_event(pod, "Pulled", f'Successfully pulled image "{image}" in '
                                                 f'{self.timings.image_pull_s:g}s (realism profile '
                                                 f'{self.timings.profile})')
        return True

    async def _kubelet_event(self, pod: Obj, reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = _now()
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
                 "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                    "namespace": meta["namespace"], "uid": meta.get("uid", ""),
                                    "fieldPath": "spec.containers{%s}" % pod["spec"]["containers"][0]["name"]},
                 "reason": reason, "message": message, "type": "Normal", "count": 1,
                 "firstTimestamp": now, "lastTimestamp": now,
                 "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")}}
        try:
            await self._call(self.kube.create, event, field_manager="kubelet-testbed")
        except ClusterError as exc:
            log.info("event %s %s: %s", reason, _key(pod), exc)

    async def _pod_status(self, pod: Obj, *, running: bool, ready: bool,
                          waiting: tuple[str, str] | None = None) -> None:
        now = _now()
        container = pod["spec"]["containers"][0]
        replica = self.pool.get(_key(pod))
        started = pod.get("status", {}).get("startTime") or now
        state: Obj
        if waiting:
            state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        else:
            state = {"running": {"startedAt": started}}
        cond = lambda t, ok: {"type": t, "status": "True" if ok else "False", "lastTransitionTime": now}  # noqa: E731
        status = {
            "phase": "Running" if running else "Pending",
            "hostIP": "10.0.0.1",
            # a pod-network address (the replica itself listens on loopback): endpoint
            # controllers refuse loopback pod IPs
            "podIP": self._pod_ip(pod) if replica else None,
            "startTime": started,
            "conditions": [cond("PodScheduled", True), cond("Initialized", True),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": [{
                "name": container["name"], "image": container.get("image", ""), "imageID": "",
                "ready": ready, "started": running, "restartCount": 0, "state": state,
                "containerID": f"kwok://{pod['metadata'].get('uid', '')}" if running else None,
            }],
        }
        status = {k: v for k, v in status.items() if v is not None}
        try:
            await self._call(self.kube.apply_status, {"apiVersion": "v1", "kind": "Pod",
                                                      "metadata": {"name": pod["metadata"]["name"],
                                                                   "namespace": pod["metadata"]["namespace"]},
                                                      "status": status}, field_manager="kubelet-testbed")
        except ClusterError as exc:
            log.info("pod status %s: %s", _key(pod), exc)

    def _pod_ip(self, pod: Obj) -> str:
        key = _key(pod)
        if key not in self.pod_ips:
            n = len(self.pod_ips) + 2
            self.pod_ips[key] = f"10.245.{(n >> 8) & 255}.{n & 255}"
        return self.pod_ips[key]

    async def readiness_loop(self) -> None:
        """Report a pod Ready once its replica is healthy (the model finished loading)."""
        while not self.stop.is_set():
            changed = False
            for key, pod in list(self.replica_pods.items()):
                replica = self.pool.get(key)
                if replica and replica.healthy and key not in self.ready_reported:
                    self.ready_reported.add(key)
                    await self._pod_status(pod, running=True, ready=True)
                    changed = True
            if changed:
                self.refresh_routes()
            await asyncio.sleep(0.2)

    def refresh_routes(self) -> None:
        routes: dict[str, list[str]] = {}
        with self.lock:
            isvcs = list(self.isvcs.values())
        for isvc in isvcs:
            meta = isvc["metadata"]
            host = kserve.host_for(meta["name"], meta["namespace"])
            backends = []
            for key in sorted(self.ready_reported):
                pod = self.replica_pods.get(key)
                replica = self.pool.get(key)
                if (pod and replica and replica.healthy and pod["metadata"]["namespace"] == meta["namespace"]
                        and (pod["metadata"].get("labels") or {}).get(kserve.ISVC_LABEL) == meta["name"]):
                    backends.append(replica.url)
            routes[host] = backends
        self.gateway.set_routes(routes)

    # -- ResourcePolicy ------------------------------------------------------------------
    def _unit_counts(self, policy: Obj, exclude_uid: str = "") -> dict[int, int]:
        """Pods per unit of ``policy``: bound ones (Terminating ones only with
        ``ignoreTerminatingPod: false``) plus those the extender just sent to a unit."""
        counts: dict[int, int] = {}
        ignore_terminating = policy.get("spec", {}).get("ignoreTerminatingPod", True)
        pkey = _key(policy)
        for pod in self.pods.values():
            if not rp.selects(policy, pod):
                continue
            if ignore_terminating and pod["metadata"].get("deletionTimestamp"):
                continue
            node = pod["spec"].get("nodeName")
            if not node:
                continue
            unit = rp.unit_of_node(policy, self.nodes.get(node, {}))
            if unit is not None:
                counts[unit] = counts.get(unit, 0) + 1
        horizon = time.monotonic() - 30
        for uid, (at, key, unit) in list(self.reservations.items()):
            if at < horizon:
                del self.reservations[uid]
            elif key == pkey and uid != exclude_uid:
                counts[unit] = counts.get(unit, 0) + 1
        return counts

    def extender_filter(self, args: Obj) -> Obj:
        """The scheduler extender's filter verb (``testbed.resourcepolicy.decide``)."""
        pod, nodes, _names = rp.extender_candidates(args)
        meta = pod.get("metadata") or {}
        uid = meta.get("uid", "")
        with self.lock:
            policy = rp.policy_for(pod, list(self.policies.values()))
            if not policy:
                return rp.filter_result(nodes, None)
            counts = self._unit_counts(policy, exclude_uid=uid)
            candidates = [(n["metadata"]["name"], n["metadata"].get("labels") or {}) for n in nodes]
            created = meta.get("creationTimestamp")
            age = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
                   ).total_seconds() if created else 0.0
            decision = rp.decide(policy, candidates, counts, age)
            if decision.unit is not None and uid:
                self.reservations[uid] = (time.monotonic(), _key(policy), decision.unit)
        if decision.error:
            log.info("resourcepolicy %s/%s: %s", meta.get("namespace"), meta.get("name"), decision.error)
        return rp.filter_result(nodes, decision)

    def extender_prioritize(self, args: Obj) -> list[Obj]:
        pod, nodes, _names = rp.extender_candidates(args)
        with self.lock:
            policy = rp.policy_for(pod, list(self.policies.values()))
        return rp.scores(policy, [(n["metadata"]["name"], n["metadata"].get("labels") or {}) for n in nodes])

    async def apply_policy_to_bound_pod(self, pod: Obj) -> None:
        with self.lock:
            policy = rp.policy_for(pod, list(self.policies.values()))
            if not policy:
                return
            unit = rp.unit_of_node(policy, self.nodes.get(pod["spec"]["nodeName"], {}))
            # a bound pod is counted by its node from now on
            self.reservations.pop(pod["metadata"].get("uid", ""), None)
        patch = rp.bound_pod_patch(pod, policy, unit)
        if patch and not pod["metadata"].get("deletionTimestamp"):
            try:
                await self._call(self.kube.patch, "v1", "Pod", pod["metadata"]["name"], patch,
                                 namespace=pod["metadata"]["namespace"])
            except ClusterError as exc:
                log.info("pod %s deletion cost: %s", _key(pod), exc)

    # -- HTTP ----------------------------------------------------------------------------
    def api_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/pod-metrics", self._pod_metrics)
        app.router.add_post("/v1/faults", self._faults)
        app.router.add_post(f"{rp.EXTENDER_PATH}/filter", self._extender_filter)
        app.router.add_post(f"{rp.EXTENDER_PATH}/prioritize", self._extender_prioritize)
        return app

    async def _healthz(self, _req: web.Request) -> web.Response:
        ok = {"Pod", "Node", "InferenceService", "ResourcePolicy", "Deployment"} <= self.synced
        if ok and self.upstream_kserve:
            ok = self.kserve_proc is not None and self.kserve_proc.poll() is None and kserve_upstream.ready(self.cfg)
        return web.Response(status=200 if ok else 503, text="ok" if ok else "syncing")

    def status_doc(self) -> Obj:
        hosts = {}
        for host, backends in self.gateway.routes().items():
            hosts[host] = {"ready_replicas": len(backends)}
        return {"gateway": {"url": f"http://127.0.0.1:{self.cfg.ports.gateway}", "hosts": hosts},
                "replicas": {k: {"port": r.port, "healthy": r.healthy} for k, r in
                             ((k, self.pool.get(k)) for k in self.replica_pods) if r}}

    async def _status(self, _req: web.Request) -> web.Response:
        return web.json_response(self.status_doc())

    async def _pod_metrics(self, req: web.Request) -> web.Response:
        ns = req.query.get("namespace", "")
        if self.timings.metric_lag_s > 0:
            return web.json_response(self._lagged_metrics(ns))
        return web.json_response(self._live_metrics(ns))

    def _lagged_metrics(self, ns: str) -> Obj:
        """The realism profile's metric pipeline lag: the figures as they were ``metric_lag_s`` ago
        (DCGM -> exporter -> Prometheus -> adapter); nothing before the first sample that old."""
        cutoff = time.time() - self.timings.metric_lag_s
        old = [doc for at, doc in self.metric_history if at <= cutoff]
        if not old:
            return {"pods": {}, "timestamp": cutoff}
        snap = old[-1]
        pods = {name: v for name, v in snap.get(ns, {}).items() if f"{ns}/{name}" in self.replica_pods}
        return {"pods": pods, "timestamp": snap["_at"]}

    async def metric_sampler(self) -> None:
        """Every second, a snapshot of every namespace's per-pod figures, kept for ``metric_lag_s``."""
        while not self.stop.is_set():
            now = time.time()
            namespaces = {k.split("/", 1)[0] for k in list(self.replica_pods)}
            snap: Obj = {ns: self._live_metrics(ns)["pods"] for ns in namespaces}
            snap["_at"] = now
            self.metric_history.append((now, snap))
            while self.metric_history and self.metric_history[0][0] < now - self.timings.metric_lag_s - 5:
                self.metric_history.popleft()
            await asyncio.sleep(1.0)

    def _live_metrics(self, ns: str) -> Obj:
        pods: dict[str, dict[str, float]] = {}
        for key in list(self.replica_pods):
            pns, name = key.split("/", 1)
            replica = self.pool.get(key)
            if pns != ns or not replica or not replica.healthy:
                continue
            pods[name] = {"DCGM_CUSTOM_PROCESS_SM_UTIL": round(replica.sm_util(), 3),
                          "vllm_num_requests_running": float(replica.running),
                          "vllm_num_requests_waiting": float(replica.waiting),
                          "vllm_gpu_cache_usage_perc": round(replica.gpu_cache_usage, 4),
                          "vllm_num_preemptions_total": float(replica.num_preemptions)}
        return {"pods": pods, "timestamp": time.time()}

    async def _faults(self, req: web.Request) -> web.Response:
        try:
            body = await req.json()
            key = f"{body['namespace']}/{body['pod']}"
        except (ValueError, KeyError):
            return web.json_response({"error": "body must be JSON with namespace, pod and fault fields"}, status=400)
        if not self.pool.get(key):
            return web.json_response({"error": f"no replica for pod {key}"}, status=404)
        fault = {k: v for k, v in body.items() if k not in ("namespace", "pod")}
        self.pool.set_fault(key, **fault)
        return web.json_response({"pod": key, "fault": fault})

    async def _extender_filter(self, req: web.Request) -> web.Response:
        try:
            args = await req.json()
        except ValueError:
            return web.json_response({"Error": "ExtenderArgs JSON expected"}, status=400)
        return web.json_response(self.extender_filter(args))

    async def _extender_prioritize(self, req: web.Request) -> web.Response:
        try:
            args = await req.json()
        except ValueError:
            return web.json_response([], status=400)
        return web.json_response(self.extender_prioritize(args))

    # -- main ----------------------------------------------------------------------------
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        kinds = [("Node", "v1", {}), ("Pod", "v1", {}), ("ResourcePolicy", rp.API_VERSION, {}),
                 ("InferenceService", kserve.API_VERSION, {}),
                 ("Deployment", "apps/v1", {"label_selector": "component=predictor"})]
        for kind, api_version, kw in kinds:
            threading.Thread(target=self._sync_then_watch, args=(kind, api_version, kw), daemon=True,
                             name=f"watch-{kind}").start()
        if self.upstream_kserve:
            self.kserve_proc = kserve_upstream.start(self.cfg)
        runners = []
        api = web.AppRunner(self.api_app(), access_log=None)
        await api.setup()
        await web.TCPSite(api, "127.0.0.1", self.cfg.ports.daemon).start()
        runners.append(api)
        await self.gateway.start()
        asyncio.create_task(self.readiness_loop())
        asyncio.create_task(self.podrunner.run(self.stop))
        if self.timings.metric_lag_s > 0:
            asyncio.create_task(self.metric_sampler())
        log.info("daemon up: api and scheduler extender :%s gateway :%s", self.cfg.ports.daemon,
                 self.cfg.ports.gateway)
        while True:
            kind, etype, obj = await self.queue.get()
            try:
                await self.handle(kind, etype, obj)
            except ClusterError as exc:
                log.warning("%s %s %s: %s", kind, etype, _key(obj), exc)
            except Exception:  # noqa: BLE001
                log.exception("handling %s %s %s", kind, etype, _key(obj))

    def _sync_then_watch(self, kind: str, api_version: str, kw: dict) -> None:
        # the first list is delivered as ADDED events by Kube.watch; mark synced after it
        while not self.stop.is_set():
            try:
                items, rv = self.kube.list_with_version(api_version, kind, **kw)
                break
            except ClusterError as exc:
                log.warning("list %s: %s; retrying", kind, exc)
                time.sleep(1)
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            self._emit(kind, "ADDED", item)
        self.synced.add(kind)
        while not self.stop.is_set():
            try:
                for etype, obj in self.kube.watch(api_version, kind, timeout_s=3600, stop=self.stop,
                                                  resource_version=rv, **kw):
                    self._emit(kind, etype, obj)
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
            except ClusterError as exc:
                log.warning("watch %s: %s; re-listing", kind, exc)
                time.sleep(1)
                try:
                    items, rv = self.kube.list_with_version(api_version, kind, **kw)
                    for item in items:
                        self._emit(kind, "MODIFIED", item)
                except ClusterError:
                    pass


def _isvc_ref(isvc: Obj) -> Obj:
    return {"apiVersion": kserve.API_VERSION, "kind": "InferenceService",
            "metadata": {"name": isvc["metadata"]["name"], "namespace": isvc["metadata"]["namespace"]}}


def _conditions_equal(old: Obj, new: Obj) -> bool:
    def norm(s: Obj):
        return sorted((c["type"], c["status"], c.get("reason", "")) for c in s.get("conditions") or [])
    return norm(old) == norm(new) and old.get("url") == new.get("url")


def main() -> None:
    parser = argparse.ArgumentParser(description="tidegate test-bed daemon")
    parser.add_argument("--config", required=True, help="the test bed's config.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    cfg = TestbedConfig.model_validate_json(Path(args.config).read_text())
    daemon = Daemon(cfg)
    try:
        asyncio.run(daemon.run())
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop.set()
        if daemon.kserve_proc is not None:
            daemon.kserve_proc.terminate()
        daemon.podrunner.stop_all()


if __name__ == "__main__":
    main()

