"""All Kubernetes access of tidegate goes through this module.

It loads a kubeconfig (file and context) or the in-cluster config, applies objects with
server-side apply under the field manager ``tidegate``, and offers waits and watches that
resume after a dropped connection or ``410 Gone``. Every transport or API failure becomes a
``ClusterError`` that carries the HTTP status and names the object, chained with ``from``.
No other module builds API calls by hand.

Example::

    kube = Kube.connect(kubeconfig="~/.kube/config", context="ack-prod")
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {...}})
    for event_type, obj in kube.watch("v1", "Pod", namespace="default", timeout_s=60):
        ...
"""

from __future__ import annotations

import copy
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import (
    DynamicApiError,
    ResourceNotFoundError,
)

from tasks.errors import ClusterError
from tasks.names import FIELD_MANAGER

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def condition_true(obj: Obj | None, ctype: str = "Ready") -> bool:
    """The object's ``status.conditions`` has ``ctype`` with status "True" (a Ready pod, node or
    InferenceService)."""
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conds)


def _describe(api_version: str, kind: str, name: str | None = None, namespace: str | None = None) -> str:
    where = f"{namespace}/" if namespace else ""
    return f"{kind}({api_version}) {where}{name}" if name else f"{kind}({api_version})"


def _status_message(exc: Exception) -> tuple[int | None, str]:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None) or getattr(exc, "summary", lambda: "")()
    try:
        parsed = json.loads(body) if isinstance(body, (str, bytes)) else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("message"):
        return status, parsed["message"]
    return status, (str(getattr(exc, "reason", "")) or str(exc)).strip()[:300]


def _tls_failure(exc: BaseException) -> str | None:
    """The certificate problem behind a failed request, if that is what it was."""
    for cause in (exc, getattr(exc, "reason", None)):
        if isinstance(cause, (urllib3.exceptions.SSLError, ssl.SSLError)):
            text = str(getattr(cause, "reason", None) or cause)
            return (text.split("] ", 1)[-1].split(" (_ssl")[0])[:160]
    return None


class Kube:
    """A connection to one cluster. Thread-safe for reads; create one per flow run."""

    def __init__(self, api_client: client.ApiClient, *, server: str = ""):
        self.api_client = api_client
        self.server = server or api_client.configuration.host
        self._dyn: DynamicClient | None = None
        self._lock = threading.Lock()

    # -- connecting -----------------------------------------------------------------------
    @classmethod
    def connect(cls, kubeconfig: str | Path | None = None, context: str | None = None,
                in_cluster: bool = False, *, timeout_s: float = 10.0) -> Kube:
        cfg = client.Configuration()
        try:
            if in_cluster:
                config.load_incluster_config(client_configuration=cfg)
            else:
                path = str(Path(kubeconfig).expanduser()) if kubeconfig else None
                config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                        persist_config=False)
        except config.ConfigException as exc:
            where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '~/.kube/config'}"
            msg = str(exc).splitlines()[0]
            raise ClusterError(f"cluster.kubeconfig: cannot load {where}: {msg}",
                               hint="check cluster.kubeconfig / cluster.context in the spec") from exc
        except OSError as exc:
            raise ClusterError(f"cluster.kubeconfig: cannot read {kubeconfig}: {exc.strerror}") from exc
        cfg.retries = urllib3.Retry(total=2, connect=2, read=0, backoff_factor=0.2)
        api = client.ApiClient(cfg)
        kube = cls(api, server=cfg.host)
        kube._timeout_s = timeout_s
        return kube

    def ping(self) -> str:
        """The server's version, or a ClusterError naming the address that did not answer."""
        try:
            info = client.VersionApi(self.api_client).get_code(_request_timeout=getattr(self, "_timeout_s", 10.0))
        except ApiException as exc:
            status, msg = _status_message(exc)
            raise ClusterError(f"API server {self.server} answered {status}: {msg}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            tls = _tls_failure(exc)
            if tls:
                raise ClusterError(f"API server {self.server}: TLS verification failed ({tls})",
                                   hint="the kubeconfig's certificate-authority must be the CA that signed the API "
                                        "server's certificate (verification is never skipped)") from exc
            raise ClusterError(f"API server {self.server} is unreachable: {type(exc).__name__}",
                               hint="check cluster.kubeconfig/context, or start the test bed with `make testbed-up`") from exc
        return info.git_version

    @property
    def dyn(self) -> DynamicClient:
        with self._lock:
            if self._dyn is None:
                try:
                    self._dyn = DynamicClient(self.api_client)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise ClusterError(f"API server {self.server} is unreachable during discovery") from exc
                except ApiException as exc:
                    status, msg = _status_message(exc)
                    raise ClusterError(f"API discovery on {self.server} failed ({status}): {msg}") from exc
            return self._dyn

    def invalidate_discovery(self) -> None:
        with self._lock:
            self._dyn = None

    def resource(self, api_version: str, kind: str):
        try:
            return self.dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            # a CRD may have been installed after discovery was cached
            self.invalidate_discovery()
            try:
                return self.dyn.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError as exc:
                raise ClusterError(f"{kind}({api_version}) is not served by {self.server}",
                                   hint="install its CRD/API first") from exc

    def has_api(self, api_version: str, kind: str) -> bool:
        try:
            self.resource(api_version, kind)
            return True
        except ClusterError:
            return False

    # -- CRUD ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ApiException, DynamicApiError) as exc:
            status, msg = _status_message(exc)
            raise ClusterError(f"{what}: {status} {msg}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(f"{what}: API server {self.server} unreachable ({type(exc).__name__})") from exc

    def apply(self, obj: Obj, *, field_manager: str = FIELD_MANAGER, dry_run: bool = False,
              force: bool = False) -> Obj:
        """Server-side apply. Conflicts with other field managers are errors unless ``force`` (only
        for objects the caller owns or was told to take over: ``tasks.ownership``)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        meta = obj.get("metadata", {})
        res = self.resource(api_version, kind)
        kwargs: dict[str, Any] = {"field_manager": field_manager, "force_conflicts": force}
        if dry_run:
            kwargs["dry_run"] = "All"
        if res.namespaced:
            kwargs["namespace"] = meta.get("namespace") or "default"
        what = f"apply {_describe(api_version, kind, meta.get('name'), kwargs.get('namespace'))}"
        out = self._call(what, lambda: res.server_side_apply(body=obj, name=meta.get("name"), **kwargs))
        return out.to_dict()

    def apply_status(self, obj: Obj, *, field_manager: str = FIELD_MANAGER) -> Obj:
        api_version, kind = obj["apiVersion"], obj["kind"]
        meta = obj["metadata"]
        res = self.resource(api_version, kind)
        ns = meta.get("namespace") if res.namespaced else None
        what = f"apply status of {_describe(api_version, kind, meta['name'], ns)}"
        body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": meta["name"], "namespace": ns},
                "status": obj["status"]}
        out = self._call(what, lambda: res.status.server_side_apply(
            body=body, name=meta["name"], namespace=ns, field_manager=field_manager, force_conflicts=True))
        return out.to_dict()

    def patch(self, api_version: str, kind: str, name: str, patch: Obj, *, namespace: str | None = None,
              content_type: str = "application/merge-patch+json") -> Obj:
        res = self.resource(api_version, kind)
        ns = namespace if res.namespaced else None
        what = f"patch {_describe(api_version, kind, name, ns)}"
        return self._call(what, lambda: res.patch(name=name, namespace=ns, body=patch,
                                                  content_type=content_type)).to_dict()

    def create(self, obj: Obj, *, field_manager: str = FIELD_MANAGER) -> Obj:
        """Create (POST): an object of that name that exists already answers 409, never overwritten."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata") or {}  # reviews (SelfSubjectAccessReview, TokenReview) have none
        ns = meta.get("namespace", "default") if res.namespaced else None
        what = f"create {_describe(obj['apiVersion'], obj['kind'], meta.get('name'), ns)}"
        return self._call(what, lambda: res.create(body=obj, namespace=ns, field_manager=field_manager)).to_dict()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        res = self.resource(api_version, kind)
        ns = namespace if res.namespaced else None
        try:
            return res.get(name=name, namespace=ns).to_dict()
        except (ApiException, DynamicApiError) as exc:
            if getattr(exc, "status", None) == 404:
                return None
            status, msg = _status_message(exc)
            raise ClusterError(f"get {_describe(api_version, kind, name, ns)}: {status} {msg}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(f"get {_describe(api_version, kind, name, ns)}: API server unreachable") from exc

    def list(self, api_version: str, kind: str, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None) -> list[Obj]:
        return self.list_with_version(api_version, kind, namespace, label_selector=label_selector,
                                      field_selector=field_selector)[0]

    def list_with_version(self, api_version: str, kind: str, namespace: str | None = None, *,
                          label_selector: str | None = None,
                          field_selector: str | None = None) -> tuple[list[Obj], str]:
        res = self.resource(api_version, kind)
        ns = namespace if res.namespaced else None
        what = f"list {_describe(api_version, kind, None, ns)}"
        out = self._call(what, lambda: res.get(namespace=ns, label_selector=label_selector,
                                               field_selector=field_selector))
        data = out.to_dict()
        return data.get("items", []), data.get("metadata", {}).get("resourceVersion", "")

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None, *,
               propagation: str = "Background", grace_period_s: int | None = None,
               uid: str | None = None) -> bool:
        """Delete; False if it was already gone. With ``uid``, only that object (a precondition: an
        object recreated under the name answers 409)."""
        res = self.resource(api_version, kind)
        ns = namespace if res.namespaced else None
        body: Obj = {"propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        if grace_period_s is not None:
            body["gracePeriodSeconds"] = grace_period_s
        try:
            res.delete(name=name, namespace=ns, body=body)
            return True
        except (ApiException, DynamicApiError) as exc:
            if getattr(exc, "status", None) == 404:
                return False
            status, msg = _status_message(exc)
            raise ClusterError(f"delete {_describe(api_version, kind, name, ns)}: {status} {msg}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(f"delete {_describe(api_version, kind, name, ns)}: API server unreachable") from exc

    def raw_get(self, path: str, *, timeout_s: float = 10.0) -> Obj:
        """GET an API path that has no typed client (aggregated APIs, /version, ...)."""
        what = f"GET {path}"

        def call() -> Obj:
            method, url, headers, body, _ = self.api_client.param_serialize(
                "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
            resp = self.api_client.call_api(method, url, header_params=headers, body=body,
                                            _request_timeout=timeout_s)
            resp.read()
            if resp.status >= 400:
                raise ApiException(status=resp.status, reason=resp.reason, http_resp=resp)
            return json.loads(resp.data or b"{}")

        return self._call(what, call)

    def can_i(self, verb: str, resource: str, *, group: str = "", namespace: str | None = None,
              name: str | None = None) -> bool:
        attributes = {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
        if name:
            attributes["name"] = name
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attributes}}
        out = self.create(review)
        return bool(out.get("status", {}).get("allowed"))

    # -- watching -----------------------------------------------------------------------
    def watch(self, api_version: str, kind: str, namespace: str | None = None, *,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_s: float = 60.0, resource_version: str | None = None,
              stop: threading.Event | None = None, send_initial: bool = True) -> Iterator[tuple[str, Obj]]:
        """Yield (type, object) for ``timeout_s`` seconds.

        Starts with a list (each item yielded as ``ADDED`` when ``send_initial``), then
        watches from that resourceVersion. A dropped connection resumes from the last seen
        resourceVersion; ``410 Gone`` re-lists and yields what changed meanwhile: ``ADDED``
        for objects new to this watch, ``MODIFIED`` for those whose resourceVersion changed,
        ``DELETED`` (with the last state seen) for those gone, so that a consumer sees no
        duplicates and loses nothing but intermediate states the server compacted away.
        """
        res = self.resource(api_version, kind)
        ns = namespace if res.namespaced else None
        deadline = time.monotonic() + timeout_s
        seen: dict[str, tuple[str, Obj]] = {}   # key -> (resourceVersion, last object seen)

        def key(o: Obj) -> str:
            m = o.get("metadata", {})
            return f"{m.get('namespace', '')}/{m.get('name')}"

        def relist(emit: bool) -> tuple[list[tuple[str, Obj]], str]:
            items, rv = self.list_with_version(api_version, kind, ns, label_selector=label_selector,
                                               field_selector=field_selector)
            current = {key(i): i for i in items}
            events: list[tuple[str, Obj]] = []
            for k, item in current.items():
                item_rv = item.get("metadata", {}).get("resourceVersion", "")
                before = seen.get(k)
                if before is None or before[0] != item_rv:
                    events.append(("ADDED" if before is None else "MODIFIED", item))
                seen[k] = (item_rv, item)
            for k in [k for k in seen if k not in current]:
                # deleted while the watch was down: the last state we saw, as the server would send it
                events.append(("DELETED", seen.pop(k)[1]))
            return (events if emit else []), rv

        if resource_version is None:
            events, rv = relist(True)
            if send_initial:
                yield from events
        else:
            rv = resource_version
        backoff = 0.2
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            remaining = max(1, int(min(deadline - time.monotonic(), 30)))
            try:
                stream = res.watch(namespace=ns, label_selector=label_selector, field_selector=field_selector,
                                   resource_version=rv, timeout=remaining, allow_watch_bookmarks=True)
                for ev in stream:
                    obj = ev["raw_object"]
                    etype = ev["type"]
                    if etype == "ERROR":
                        if obj.get("code") == 410:
                            raise _Gone()
                        raise ClusterError(f"watch {_describe(api_version, kind, None, ns)}: {obj.get('message')}")
                    new_rv = obj.get("metadata", {}).get("resourceVersion")
                    if new_rv:
                        rv = new_rv
                    if etype == "BOOKMARK":
                        continue
                    k = key(obj)
                    if etype == "DELETED":
                        seen.pop(k, None)
                    else:
                        seen[k] = (new_rv or "", obj)
                    yield etype, copy.deepcopy(obj)
                    if time.monotonic() >= deadline or (stop and stop.is_set()):
                        return
                backoff = 0.2
            except _Gone:
                log.info("watch %s: 410 Gone, re-listing", kind)
                events, rv = relist(True)
                yield from events
            except (ApiException, DynamicApiError) as exc:
                if getattr(exc, "status", None) == 410:
                    events, rv = relist(True)
                    yield from events
                    continue
                status, msg = _status_message(exc)
                if status in (401, 403, 404):
                    raise ClusterError(f"watch {_describe(api_version, kind, None, ns)}: {status} {msg}") from exc
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.info("watch %s dropped (%s); resuming from %s", kind, type(exc).__name__, rv)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5)

    def wait_for(self, api_version: str, kind: str, name: str, namespace: str | None,
                 predicate: Callable[[Obj | None], bool], *, timeout_s: float,
                 describe: str = "") -> Obj | None:
        """Watch one object until ``predicate(obj)`` holds (obj is None once deleted)."""
        current = self.get(api_version, kind, name, namespace)
        if predicate(current):
            return current
        last = current
        for etype, obj in self.watch(api_version, kind, namespace, field_selector=f"metadata.name={name}",
                                     timeout_s=timeout_s):
            last = None if etype == "DELETED" else obj
            if predicate(last):
                return last
        raise TimeoutError(describe or f"{kind} {name} did not reach the wanted state in {timeout_s:.0f}s")


class _Gone(Exception):
    pass
