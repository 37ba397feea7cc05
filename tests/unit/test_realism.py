"""Realism profiles (testbed/realism.py), how the test bed applies them (testbed/cluster.py, the
daemon's kubelet) and the report's realism block with its projection (tasks/realism.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tasks.realism import NO_TESTBED, read_testbed_realism, realism_block, step_deltas
from tasks.report import _realism_html
from tasks.report_model import ElasticityBlock, PhaseBlock, RunReport
from testbed import cluster
from testbed.config import TestbedConfig, load_config, save_config
from testbed.errors import TestbedError
from testbed.realism import FIGURES, Realism, table_markdown


@pytest.fixture
def bed_yaml(tmp_path, monkeypatch):
    """A private test bed file as the engineers' beds are: the base the profile goes on top of."""
    path = tmp_path / "bed.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "ports": {"apiserver": 32003},
                                    "autoscaler": {"scan_interval_s": 7}}))
    monkeypatch.setenv("TIDEGATE_TESTBED_CONFIG", str(path))
    return path


# -- the profiles --------------------------------------------------------------------------------
def test_fast_adds_no_delay_and_keeps_the_test_bed_settings():
    cfg = TestbedConfig()
    t = cfg.timings
    assert cfg.profile == "fast" and not t.node_delays
    assert (t.image_pull_s, t.weight_load_s, t.metric_lag_s, t.model_load_s) == (0, 0, 0, None)
    assert (t.hpa_sync_period_s, t.ca_scan_interval_s, t.ca_scale_down_unneeded_s,
            t.ca_scale_down_delay_after_add_s) == (5, 5, 20, 20)  # the test bed's own settings
    assert t.ca_max_node_provision_s == 120


def test_ack_gpu_has_the_published_defaults_each_with_a_source():
    r = Realism(profile="ack-gpu")
    assert (r.hpa_sync_period_s, r.hpa_downscale_stabilization_s) == (15, 300)
    assert (r.ca_scan_interval_s, r.ca_scale_down_unneeded_s, r.ca_scale_down_delay_after_add_s,
            r.ca_max_node_provision_s, r.ca_gpu_pod_buffer_s) == (10, 600, 600, 900, 30)
    assert r.engine_start_s == 90 and r.metric_lag_s == 30
    assert r.image_pull_s == round(8 * 1024 / 60, 1)          # derived: size / bandwidth
    assert r.weight_load_s == round(5 * 1024 / 100, 1)        # ossfs
    assert r.model_load_s == r.weight_load_s + r.engine_start_s
    figs = r.figures()
    assert [f.name for f in figs] == list(FIGURES)
    assert all(f.source for f in figs) and all(f.source != "set by the user" for f in figs)
    assert any("http" in f.source for f in figs)


def test_overrides_win_are_listed_and_survive_config_json(bed_yaml):
    cfg = load_config(["realism.node_ready_s=90", "realism.weight_storage=nas"], profile="ack-gpu")
    assert cfg.profile == "ack-gpu" and cfg.ports.apiserver == 32003    # the private file stays the base
    assert cfg.timings.ca_scan_interval_s == 10                          # the profile's, not autoscaler.*
    r = cfg.realism
    assert r.node_ready_s == 90 and r.overridden == ["node_ready_s", "weight_storage"]
    assert r.weight_load_s == round(5 * 1024 / 300, 1)                  # NAS bandwidth
    assert r.source("node_ready_s").startswith("set by the user")
    save_config(cfg)
    again = load_config(saved=True)
    assert again.realism == r and again.realism.overridden == ["node_ready_s", "weight_storage"]


def test_fast_profile_takes_the_files_autoscaler_settings(bed_yaml):
    assert load_config().timings.ca_scan_interval_s == 7


def test_a_bad_profile_or_figure_is_refused(bed_yaml):
    with pytest.raises(TestbedError, match="ack-gpu"):
        load_config(profile="aws")
    with pytest.raises(TestbedError, match="realism.node_ready_s"):
        load_config(["realism.node_ready_s=-1"])
    with pytest.raises(TestbedError, match="realism"):
        load_config(["realism.no_such_figure=1"])


def test_the_autoscaler_does_not_give_up_on_nodes_the_profile_makes_slow():
    assert Realism(node_ready_s=120).ca_max_node_provision_s == 240
    assert Realism(node_ready_s=120, ca_max_node_provision_s=60).ca_max_node_provision_s == 60  # asked for


def test_docs_table_lists_every_figure_with_sources():
    md = table_markdown()
    assert md.splitlines()[0].startswith("| figure | unit | fast | ack-gpu |") and "source" in md.splitlines()[0]
    assert all(f"`{n}`" in md for n in FIGURES)
    doc = Path(__file__).resolve().parents[2] / "docs" / "realism.md"
    assert table_markdown() in doc.read_text(), "docs/realism.md's table is stale: paste table_markdown()"


# -- applied by the test bed -----------------------------------------------------------------------
_INIT = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": "node-initialize"},
         "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Node"},
                  "selector": {"matchExpressions": [{"key": ".status.conditions", "operator": "NotIn",
                                                     "values": ["True"]}]},
                  "next": {"statusTemplate": cluster._TRANSITION_AT_CREATION + "\nconditions: []\n"
                                           + cluster._ALLOCATABLE + "\n{{ end }}\n"}}}


def test_node_stages_delay_only_elastic_nodes():
    cfg = TestbedConfig(realism=Realism(profile="ack-gpu", node_ready_s=120, node_ready_jitter_s=0))
    ready, gpu = cluster.elastic_node_stages(_INIT, cfg)
    assert ready["spec"]["delay"] == {"durationMilliseconds": 120000, "jitterDurationMilliseconds": 120000}
    assert {"key": '.metadata.labels["kwok-nodegroup"]', "operator": "Exists"} in \
        ready["spec"]["selector"]["matchExpressions"]
    assert '"nvidia.com/gpu" }}"0"' in ready["spec"]["next"]["statusTemplate"]
    assert "creationTimestamp" not in ready["spec"]["next"]["statusTemplate"]   # Ready transition: now
    assert gpu["spec"]["delay"]["durationMilliseconds"] == 30000 and gpu["spec"]["weight"] == 1
    assert _INIT["spec"]["selector"]["matchExpressions"] == [  # the input is not changed
        {"key": ".status.conditions", "operator": "NotIn", "values": ["True"]}]
    tmpl = cluster.elastic_templates(cfg)[0]
    assert tmpl["spec"]["taints"] == [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]
    assert tmpl["status"]["conditions"][0]["status"] == "False"
    no_gpu_wait = TestbedConfig(realism=Realism(node_ready_s=5))
    assert [s["metadata"]["name"] for s in cluster.elastic_node_stages(_INIT, no_gpu_wait)] == [
        "node-initialize-elastic"]


def test_fast_leaves_templates_and_durations_as_they_were():
    cfg = TestbedConfig()
    tmpl = cluster.elastic_templates(cfg)[0]
    assert tmpl["spec"] == {} and "conditions" not in tmpl["status"]
    assert [cluster._dur(x) for x in (5, 20, 300, 2.5)] == ["5s", "20s", "300s", "2.5s"]


def test_the_kubelet_loads_the_model_for_weights_plus_engine():
    from testbed.daemon import kubelet_model

    assert kubelet_model(TestbedConfig()).load_delay_s == 2.0
    ack = TestbedConfig(realism=Realism(profile="ack-gpu"))
    assert kubelet_model(ack).load_delay_s == pytest.approx(51.2 + 90)
    assert ack.emulator.load_delay_s == 2.0                  # the shared model is not changed


# -- the report's block --------------------------------------------------------------------------
def _doc(profile="fast", **over) -> dict:
    cfg = TestbedConfig(realism=Realism(profile=profile, **over))
    doc = cfg.timings.document()
    doc["model_load_s"] = cfg.timings.model_load_s or 2.0
    return doc


def _elasticity() -> ElasticityBlock:
    up = {"direction": "up", "pod": "default/qwen-3", "pool": "np-elastic", "total_s": 70.0,
          "steps": [{"step": s, "seconds": 1.0} for s in ("load step", "metric above target", "HPA desired increase",
                                                            "pod created", "autoscaler decision", "node created",
                                                            "node Ready", "pod scheduled", "pod Ready")]}
    down = {"direction": "down", "pod": "default/qwen-3", "pool": "np-elastic", "total_s": 60.0,
            "steps": [{"step": s, "seconds": 1.0} for s in ("metric below target", "HPA desired decrease",
                                                              "pod deleted", "node marked for deletion")]}
    return ElasticityBlock(time_to_hpa_rescale_s=12.0, time_to_cloud_node_s=45.0, time_to_first_cloud_pod_ready_s=50.0,
                           scale_events=[up, down])


def test_read_testbed_realism_beside_the_kubeconfig(tmp_path):
    assert read_testbed_realism(None)[0] is None
    kc = tmp_path / "admin.kubeconfig"
    doc, why = read_testbed_realism(str(kc))
    assert doc is None and "not a test bed" in why
    (tmp_path / "realism.json").write_text(json.dumps(_doc()))
    doc, where = read_testbed_realism(str(kc))
    assert doc["profile"] == "fast" and where == str(tmp_path / "realism.json")


def test_a_real_cluster_says_so():
    block = realism_block(None, _elasticity(), source="no realism.json")
    assert block.profile == NO_TESTBED == "none (real cluster)" and block.projection is None


def test_a_fast_run_is_projected_onto_ack_gpu():
    phases = [PhaseBlock(name="baseline", start="2026-01-01T00:00:00", end="2026-01-01T00:00:20"),
              PhaseBlock(name="spike", start="2026-01-01T00:00:20", end="2026-01-01T00:01:50"),
              PhaseBlock(name="cooldown", start="2026-01-01T00:01:50", end="2026-01-01T00:03:50")]
    block = realism_block(_doc(), _elasticity(), source="x", phases=phases)
    p = block.projection
    assert block.profile == "fast" and p is not None and p.onto == "ack-gpu"
    assert "PROJECTION" in p.statement
    fig = {f.figure: f for f in p.figures}
    # metric: 30 lag + 15/2 sync - 5/2 sync = 35; CA: 10/2 - 5/2 = 2.5; node: 180 + 60/2 = 210
    assert fig["time_to_hpa_rescale_s"].added_s == 35.0 and fig["time_to_hpa_rescale_s"].projected_s == 47.0
    assert fig["time_to_cloud_node_s"].projected_s == 45.0 + 35 + 2.5 + 210
    # + GPU allocatable 30 + image 136.5 + model (51.2 + 90) - the twin's 2 s
    assert fig["time_to_first_cloud_pod_ready_s"].added_s == pytest.approx(35 + 2.5 + 210 + 30 + 136.5 + 141.2 - 2,
                                                                           abs=0.2)
    up, down = p.scale_events
    assert up.projected_s == pytest.approx(70 + fig["time_to_first_cloud_pod_ready_s"].added_s, abs=0.2)
    assert down.steps == {"HPA desired decrease": 300 + 7.5 - 300 - 2.5, "node marked for deletion": 600 + 5 - 20 - 2.5}
    assert p.notes and "no spill-over" in p.notes[0]        # 90 s of spike < ~600 s projected


def test_the_specs_own_stabilization_is_not_projected():
    d = step_deltas({"hpa_sync_period_s": 5, "hpa_downscale_stabilization_s": 300},
                    {"hpa_sync_period_s": 15, "hpa_downscale_stabilization_s": 300}, spec_stabilization_s=15)
    assert d["down:HPA desired decrease"] == 5.0


def test_an_ack_gpu_bed_is_not_projected_and_keeps_overrides():
    block = realism_block(_doc("ack-gpu", node_ready_s=120), _elasticity(), source="x")
    assert block.projection is None and block.overridden == ["node_ready_s"]
    assert next(f for f in block.figures if f.name == "node_ready_s").value == 120


def test_report_json_and_html_carry_the_block():
    report = RunReport(run_id="r", spec="s", profile="local", started_at="t", elasticity=_elasticity())
    report.realism = realism_block(_doc(), report.elasticity, source="/tmp/x/realism.json")
    again = RunReport.model_validate(json.loads(json.dumps(report.to_dict())))
    assert again.realism == report.realism
    from tasks.report import markdown_summary

    assert "PROJECTION onto ack-gpu" in markdown_summary(report)
    page = _realism_html(report)
    assert "realism: profile fast" in page and "projection onto ack-gpu" in page and "realism-figures" in page
    report.realism = realism_block(None, None, source="none")
    assert "none (real cluster)" in _realism_html(report)


@pytest.mark.parametrize(("idc_image", "idc_pulls"), [("cached", False), ("pull", True)])
def test_idc_nodes_skip_the_image_pull_when_the_profile_says_they_hold_it(idc_image: str, idc_pulls: bool) -> None:
    """ack-gpu assumes the IDC pool already serves the model (its nodes hold the image): only a new
    cloud node pulls; ``realism.idc_image=pull`` makes the IDC nodes cold too."""
    from tasks.names import NODEPOOL_LABEL
    from testbed.daemon import Daemon

    cfg = TestbedConfig(realism=Realism(profile="ack-gpu", idc_image=idc_image))
    daemon = Daemon.__new__(Daemon)  # the kubelet's rule only: no cluster behind it
    daemon.cfg, daemon.timings = cfg, cfg.timings
    daemon.nodes = {"idc-gpu-0": {NODEPOOL_LABEL: cfg.idc.nodepool_id},
                    "np-elastic-abc": {NODEPOOL_LABEL: cfg.elastic.nodepool_id}}
    assert Realism(profile="ack-gpu").idc_image == "cached" and Realism().idc_image == "pull"
    assert daemon._image_cached_on("idc-gpu-0") is not idc_pulls
    assert daemon._image_cached_on("np-elastic-abc") is False
    assert daemon._image_cached_on("unknown-node") is False
