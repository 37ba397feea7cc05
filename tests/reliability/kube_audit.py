"""``python -m tests.reliability.kube_audit <tidegate args>``: the ``tidegate`` CLI with every
Kubernetes API request it makes appended to ``$TIDEGATE_KUBE_AUDIT`` (JSON lines: method, URL,
HTTP status, whether it carried a bearer token). The least-privilege test compares these requests
with the RBAC the ServiceAccount was granted. Header values are never written."""

from __future__ import annotations

import json
import os
import sys
import threading


def install(path: str) -> None:
    import kubernetes.client.rest as rest

    lock = threading.Lock()
    original = rest.RESTClientObject.request

    def request(self, method, url, headers=None, *args, **kwargs):
        status: object = None
        try:
            resp = original(self, method, url, headers, *args, **kwargs)
            status = getattr(resp, "status", None)
            return resp
        except Exception as exc:
            status = type(exc).__name__
            raise
        finally:
            bearer = any(k.lower() == "authorization" and str(v).lower().startswith("bearer ")
                         for k, v in (headers or {}).items())
            with lock, open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"method": method, "url": url, "status": status, "bearer": bearer}) + "\n")

    rest.RESTClientObject.request = request


if __name__ == "__main__":
    install(os.environ["TIDEGATE_KUBE_AUDIT"])
    from flows.cli import main

    sys.exit(main(sys.argv[1:]))
