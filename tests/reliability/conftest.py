"""Fixtures of the reliability suite: a private test bed for the whole session, per-test
clean-up, and the results table ``reports/reliability.md``, written at the end of the session
from the real outcome of every case (a case whose test failed reads ``fail``, never ``pass``).

Environment:
- ``TIDEGATE_RELIABILITY_BED``: state dir of the private bed (default
  ``/tmp/tidegate-reliability-bed``; wiped at the start, a bed left by a dead session is
  stopped first);
- ``TIDEGATE_KEEP_TESTBED=1``: leave the private bed running after the session.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import string
import time
from pathlib import Path

import pytest

from tests.reliability.helpers import PORTS, ROOT, Bed, kill_pids, processes_matching

STATE_DIR = Path(os.environ.get("TIDEGATE_RELIABILITY_BED", "/tmp/tidegate-reliability-bed"))
RESULTS_MD = ROOT / "reports" / "reliability.md"


def _random(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


@pytest.fixture(scope="session")
def bed(tmp_path_factory):
    """The private test bed, its OSS keys replaced by canary values unique to this session."""
    from testbed import cluster
    from testbed.config import load_config
    from testbed.objectstore import ACCESS_KEY_ID_ENV, ACCESS_KEY_SECRET_ENV, KEYS_FILE

    cfg = load_config([f"state_dir={STATE_DIR}"] + [f"ports.{k}={v}" for k, v in PORTS.items()])

    def log(msg: str) -> None:
        print(msg, flush=True)

    if (STATE_DIR / "run").exists():
        cluster.down(cfg, log=log)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    STATE_DIR.mkdir(parents=True)
    key_id = "TGTBCANARY" + _random(string.ascii_uppercase + string.digits, 14)
    key_secret = "canarySecret" + _random(string.ascii_letters + string.digits, 20)
    keys = STATE_DIR / KEYS_FILE
    keys.write_text(f"# reliability suite canary keys\n{ACCESS_KEY_ID_ENV}={key_id}\n"
                    f"{ACCESS_KEY_SECRET_ENV}={key_secret}\n")
    keys.chmod(0o600)
    for attempt in (1, 2):
        try:
            cluster.up(cfg, log=log)
            break
        except Exception:  # noqa: BLE001 - e.g. SeaweedFS refusing writes while the shared disk is full
            if attempt == 2:
                raise
            time.sleep(10)
    work = tmp_path_factory.mktemp("reliability")
    b = Bed(cfg=cfg, work=work, oss_key_id=key_id, oss_key_secret=key_secret)
    b.prefect_home.mkdir()
    yield b
    if os.environ.get("TIDEGATE_KEEP_TESTBED") != "1":
        cluster.down(cfg, log=log)


@pytest.fixture
def clean_bed(bed):
    """After the test: remove what its runs left on the bed, and stop processes they left."""
    before = len(bed.run_ids)
    yield bed
    for rid in bed.run_ids[before:]:
        try:
            if bed.leftovers(rid):
                bed.cleanup(rid)
        except Exception as exc:  # noqa: BLE001 - the next test checks its own preconditions
            print(f"clean-up of run {rid} failed: {exc}")
    strays = [pid for pid, _ in processes_matching(f"TIDEGATE_TESTBED_DIR={bed.cfg.state_dir}")]
    if strays:
        kill_pids(strays)


# -- the results table --------------------------------------------------------------------------
class Case:
    """One row of reports/reliability.md: what was done, what should happen, what did."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid
        self.name = nodeid.split("::")[-1]
        self.expected = ""
        self.observed = ""
        self.seconds: float | None = None
        self.status = "not run"
        self.error = ""
        self.durations: dict[str, float] = {}

    def describe(self, name: str, expected: str) -> None:
        self.name, self.expected = name, expected

    def observe(self, text: str) -> None:
        self.observed = text


_CASES: dict[str, Case] = {}


@pytest.fixture
def case(request) -> Case:
    c = Case(request.node.nodeid)
    _CASES[request.node.nodeid] = c
    return c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    c = _CASES.get(item.nodeid)
    if c is None:
        return
    c.durations[rep.when] = rep.duration
    if rep.failed:
        c.status = "fail"
        crash = getattr(rep.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(rep.longrepr)
        c.error = f"{rep.when}: {' '.join(text.split())}"[:400]
    elif rep.when == "call" and c.status != "fail":
        c.status = "skip" if rep.skipped else "pass"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")


def pytest_sessionfinish(session, exitstatus):
    if not _CASES:
        return
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = ["# tidegate reliability and security suite", "",
             f"Written by `pytest tests/reliability` at {stamp} from the outcome of each case; `fail` rows name "
             "the assertion that failed.", "",
             "| case | expected outcome | observed | seconds | result |", "|---|---|---|---|---|"]
    passed = 0
    for c in _CASES.values():
        seconds = c.seconds if c.seconds is not None else c.durations.get("call", 0.0)
        observed = c.observed
        if c.status == "fail":
            observed = f"{observed} — FAILED {c.error}" if observed else f"FAILED {c.error}"
        passed += c.status == "pass"
        lines.append(f"| {_cell(c.name)} | {_cell(c.expected)} | {_cell(observed)} | {seconds:.1f} | {c.status} |")
    lines += ["", f"{passed} of {len(_CASES)} cases pass."]
    RESULTS_MD.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_MD.write_text("\n".join(lines) + "\n")
