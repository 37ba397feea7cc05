"""What a run owns: it creates objects, it never takes over one it did not create, and it deletes
exactly what it created.

Before anything is applied, ``check_free`` reads every object the run would create: one that
exists and is not in this run's ledger is foreign, and the run stops (``OwnershipError``, exit 2)
naming each and how to proceed, unless the user named it with ``--adopt KIND/NAME``.
``create_owned`` then creates each object with a plain create (a POST: an object that appeared
meanwhile answers 409 and is never overwritten), takes over only the adopted ones (server-side
apply, forcing conflicts: the user asked for it), and records each in the ``Ledger`` (kind,
namespace, name, uid) as soon as the server returns it, in the run's report directory
(``objects.json``, written atomically). ``delete_owned`` deletes exactly the ledger's entries,
newest first, each with a uid precondition (an object recreated under the same name by someone
else is left alone), and waits until they are gone; the garbage collector removes what their
controllers made (KServe's Deployment and pods) before the InferenceService goes (foreground
deletion). A namespace is in the ledger only when the run created it; the pipeline's own
ServiceAccount and RBAC never are (an administrator applies them, ``tidegate plan --admin``).

Example::

    ledger = Ledger.open(reports_root() / run_id)
    check_free(kube, objs, ledger, adopt={"InferenceService/qwen-chat"})
    create_owned(kube, objs, ledger, adopt=...)
    ...
    delete_owned(kube, ledger, timeout_s=120)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import ClusterError, SpecError
from tasks.kube import Kube
from tasks.names import MANAGED_BY, MANAGED_BY_VALUE, RUN_LABEL

LEDGER_NAME = "objects.json"
Obj = dict[str, Any]
_ADOPT = re.compile(r"^([A-Za-z][A-Za-z0-9]*)/(?:([a-z0-9]([-a-z0-9]*[a-z0-9])?)/)?([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$")


class OwnershipError(ClusterError):
    """An object the run would create exists and is not the run's (exit 2, nothing applied)."""


@dataclass(frozen=True)
class Owned:
    """One object the run created (or took over with ``--adopt``)."""

    api_version: str
    kind: str
    namespace: str | None
    name: str
    uid: str
    adopted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"

    def block(self) -> dict:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "uid": self.uid,
                "adopted": self.adopted}


def describe(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta['namespace'] + '/' if meta.get('namespace') else ''}{meta['name']}"


def _ref(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta['namespace'] + '/' if meta.get('namespace') else ''}{meta['name']}"


def parse_adopt(values: Iterable[str] | None) -> frozenset[str]:
    """``--adopt KIND/NAME`` or ``KIND/NAMESPACE/NAME`` values, checked (SpecError naming the bad one)."""
    out = set()
    for value in values or ():
        m = _ADOPT.match(value.strip())
        if not m:
            raise SpecError(f"--adopt {value!r}: must be KIND/NAME or KIND/NAMESPACE/NAME, e.g. "
                            "InferenceService/qwen-chat")
        out.add(value.strip())
    return frozenset(out)


def _adopted(obj: Obj, adopt: frozenset[str]) -> bool:
    meta = obj["metadata"]
    names = {f"{obj['kind']}/{meta['name']}"}
    if meta.get("namespace"):
        names.add(f"{obj['kind']}/{meta['namespace']}/{meta['name']}")
    return any(a in names or a.lower() in {n.lower() for n in names} for a in adopt)


@dataclass
class Ledger:
    """The objects one run created, kept in ``<report dir>/objects.json`` (None: in memory only)."""

    path: Path | None
    entries: list[Owned] = field(default_factory=list)

    @classmethod
    def open(cls, report_dir: Path | None) -> Ledger:
        """The ledger of the run whose report directory is ``report_dir`` (empty when it has none yet)."""
        if report_dir is None:
            return cls(None)
        path = Path(report_dir) / LEDGER_NAME
        return cls(path, _read(path) if path.exists() else [])

    @classmethod
    def load(cls, report_dir: Path, run_id: str) -> Ledger:
        """An existing ledger, or a ClusterError saying that nothing can be deleted without it."""
        path = Path(report_dir) / LEDGER_NAME
        if not path.exists():
            raise ClusterError(f"run {run_id}: no ledger at {path}: tidegate deletes only the objects a run "
                               "recorded creating, so nothing was deleted",
                               hint=f"list what carries the run's label with `kubectl get all -A -l "
                                    f"{RUN_LABEL}={run_id}` and delete what you know is the run's by hand")
        return cls(path, _read(path))

    def owns(self, obj: Obj | None) -> bool:
        uid = ((obj or {}).get("metadata") or {}).get("uid")
        return bool(uid) and any(e.uid == uid for e in self.entries)

    def add(self, obj: Obj, *, adopted: bool = False) -> Owned:
        meta = obj["metadata"]
        entry = Owned(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], meta["uid"], adopted)
        self.entries.append(entry)
        self.save()
        return entry

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"objects": [asdict(e) for e in self.entries]}
        fd, tmp = tempfile.mkstemp(prefix=".objects.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read(path: Path) -> list[Owned]:
    try:
        doc = json.loads(path.read_text())
        return [Owned(**e) for e in doc["objects"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"ledger {path} is unreadable ({type(exc).__name__}): nothing was deleted",
                           hint="restore it from the report directory, or delete the run's objects by hand") from None


def _live(kube: Kube, obj: Obj) -> Obj | None:
    meta = obj["metadata"]
    return kube.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


def _owner_note(live: Obj) -> str:
    labels = live["metadata"].get("labels") or {}
    if labels.get(MANAGED_BY) == MANAGED_BY_VALUE and labels.get(RUN_LABEL):
        return f" (left by tidegate run {labels[RUN_LABEL]}: `tidegate cleanup --run-id {labels[RUN_LABEL]}`)"
    return ""


def check_free(kube: Kube, objs: Iterable[Obj], ledger: Ledger, *, adopt: frozenset[str] = frozenset()) -> list[Obj]:
    """Read each object the run would create; raise ``OwnershipError`` naming every one that exists
    and is neither the run's (ledger) nor adopted. Returns the adopted ones that exist."""
    foreign: list[tuple[Obj, str]] = []
    adopted = []
    for obj in objs:
        live = _live(kube, obj)
        if live is None or ledger.owns(live):
            continue
        if _adopted(obj, adopt):
            adopted.append(obj)
        else:
            foreign.append((obj, f"{describe(obj)}{_owner_note(live)}"))
    if foreign:
        first = foreign[0][0]
        names = [text for _, text in foreign]
        fields = {"InferenceService": "service.name", "HorizontalPodAutoscaler": "service.name",
                  "ResourcePolicy": "service.name", "PersistentVolumeClaim": "storage.pvc_name",
                  "PersistentVolume": "storage.pv_name", "Secret": "storage.oss.credentials.secret_name"}
        rename = sorted({fields.get(o["kind"], "the object's name") for o, _ in foreign})
        raise OwnershipError(
            f"{'; '.join(names)}: {'exists' if len(foreign) == 1 else 'exist'} and "
            f"{'was' if len(foreign) == 1 else 'were'} not created by this run; nothing was applied",
            hint=f"rename {' / '.join(rename)}, use another cluster.namespace, or take {'it' if len(foreign) == 1 else 'them'} "
                 f"over with --adopt {first['kind']}/{first['metadata']['name']} (the run then changes it and "
                 "deletes it at teardown; the report records it)")
    return adopted


def create_owned(kube: Kube, objs: Iterable[Obj], ledger: Ledger, *,
                 adopt: frozenset[str] = frozenset()) -> list[str]:
    """Create each object (adopted ones are taken over), recording each in the ledger; an object that
    is the run's already (a retried stage) is left as it is. Names as ``Kind/ns/name``."""
    done = []
    for obj in objs:
        live = _live(kube, obj)
        if live is not None and ledger.owns(live):
            done.append(_ref(obj))
            continue
        if live is not None:
            if not _adopted(obj, adopt):
                raise OwnershipError(f"{describe(obj)} exists and was not created by this run; nothing more "
                                     "was applied", hint="see `tidegate plan`; or pass --adopt")
            out = kube.apply(obj, force=True)
            ledger.add(out, adopted=True)
        else:
            try:
                out = kube.create(obj)
            except ClusterError as exc:
                if getattr(exc.__cause__, "status", None) == 409:
                    raise OwnershipError(f"{describe(obj)} appeared while the run was creating it; it is not "
                                         "the run's and was left alone") from exc
                raise
            ledger.add(out)
        done.append(_ref(obj))
    return done


def _gone(kube: Kube, e: Owned) -> bool:
    live = kube.get(e.api_version, e.kind, e.name, e.namespace)
    return live is None or live["metadata"].get("uid") != e.uid


def delete_owned(kube: Kube, ledger: Ledger, *, timeout_s: float = 120) -> list[str]:
    """Delete the ledger's objects, newest first, each only if its uid is the one recorded; wait until
    they are gone (or raise naming what is left). What was deleted, as ``Kind/ns/name``."""
    deleted = []
    for e in reversed(ledger.entries):
        try:
            if kube.delete(e.api_version, e.kind, e.name, e.namespace, propagation="Foreground", uid=e.uid):
                deleted.append(e.ref)
        except ClusterError as exc:
            if getattr(exc.__cause__, "status", None) == 409:  # uid precondition: another object now
                continue
            raise
    deadline = time.monotonic() + timeout_s
    left = [e for e in ledger.entries if not _gone(kube, e)]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [e for e in left if not _gone(kube, e)]
    if left:
        raise ClusterError(f"teardown: still present after {timeout_s:.0f}s: {', '.join(e.ref for e in left[:5])}",
                           hint="run `tidegate cleanup --run-id <run id>` later; it deletes the same objects")
    return deleted


__all__ = ["LEDGER_NAME", "Ledger", "Owned", "OwnershipError", "check_free", "create_owned", "delete_owned",
           "describe", "parse_adopt"]
