"""The state of one run as the stages pass it along: the spec, the report being filled, the
connection, and one typed slot per stage result.

Each slot is written by exactly one stage (``tasks.stages.STAGES`` says which: its
``produces``) and read by the later ones that name it in ``needs``. Nothing is passed through
untyped dicts; the tables written beside report.json are derived from the slots
(``tables()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tasks.cluster import ClusterReport
from tasks.cost import CostReport
from tasks.deploy import ServiceHandle
from tasks.gate import Baselines, RuleResult
from tasks.kube import Kube
from tasks.load import LoadResult
from tasks.observe import Timeline
from tasks.ownership import Ledger
from tasks.profile import Profile
from tasks.report_model import RunReport
from tasks.smoke import SmokeResult
from tasks.spec import RolloutSpec
from tasks.staging import StagedModel
from tasks.verify import Elasticity


@dataclass
class RunContext:
    spec: RolloutSpec
    run_id: str
    report: RunReport
    profile: Profile
    kube: Kube | None = None
    # secret values this run handled (redacted from every file it writes)
    secrets: list[str] = field(default_factory=list)
    # what the run created (teardown deletes exactly these) and what the user let it take over
    ledger: Ledger = field(default_factory=lambda: Ledger(None))
    adopt: frozenset[str] = frozenset()
    # the expected failure of the stage that ran last (Prefect task -> flow)
    failure: BaseException | None = None

    # -- one slot per stage result ------------------------------------------------------------
    staged: StagedModel | None = None          # stage
    cluster: ClusterReport | None = None       # prepare
    service: ServiceHandle | None = None       # deploy
    smoke: SmokeResult | None = None           # smoke
    load: LoadResult | None = None             # spike
    timeline: Timeline | None = None           # spike (the observer's)
    observed_until: pd.Timestamp | None = None  # spike: when observation stopped
    repeats: list[Any] = field(default_factory=list)  # spike: load.repeat > 1, repetitions 2.. (SpikeRun)
    elasticity: Elasticity | None = None       # verify
    cost: CostReport | None = None             # verify
    gate: list[RuleResult] = field(default_factory=list)  # gate
    history: Baselines | None = None           # gate: the spec's earlier runs from the results store

    def connect(self) -> Kube:
        """The cluster connection (made on first use, checked with a ping)."""
        if self.kube is None:
            c = self.spec.cluster
            self.kube = Kube.connect(kubeconfig=self.profile.kubeconfig, context=c.context,
                                     in_cluster=c.in_cluster)
            self.kube.ping()
        return self.kube

    def tables(self) -> dict[str, pd.DataFrame]:
        """The CSV tables of the report directory, from the slots that hold them."""
        out: dict[str, pd.DataFrame] = {}
        if self.timeline is not None:
            out["timeline"] = self.timeline.df
        if self.load is not None:
            out["requests"] = self.load.requests
            out["per_second"] = self.load.per_second
        if self.cost is not None and self.cost.status == "ok":
            out["cost_intervals"] = self.cost.intervals_frame()
        return out


__all__ = ["RunContext"]
