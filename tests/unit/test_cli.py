"""CLI exit codes and one-line errors, without a cluster (no test bed needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
ACK = str(ROOT / "examples" / "qwen-chat.ack.yaml")
LOCAL = str(ROOT / "examples" / "qwen-chat.local.yaml")


def _unreachable_kubeconfig(tmp_path: Path) -> Path:
    kc = tmp_path / "kubeconfig"
    kc.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
""")
    return kc


def test_cli_plan_offline_renders_without_a_cluster(capsys):
    assert main(["plan", "--offline", "--spec", ACK]) == 0
    out = capsys.readouterr().out
    assert "kind: ResourcePolicy" in out and "DCGM_CUSTOM_PROCESS_SM_UTIL" in out
    assert "kind: InferenceService" in out and "serving.kserve.io/autoscalerClass: external" in out


def test_cli_bad_spec_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("service:\n  min_replicas: 5\n  max_replicas: 1\n  bogus_key: 1\n")
    assert main(["validate", "--spec", str(bad), "--no-prefect"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "service" in err[0]


def test_cli_missing_spec_file_exits_2(capsys):
    assert main(["validate", "--spec", "/nonexistent/spec.yaml", "--no-prefect"]) == 2
    assert "/nonexistent/spec.yaml" in capsys.readouterr().err


def test_cli_bad_set_override_exits_2(capsys):
    assert main(["plan", "--spec", ACK, "--set", "service.gpus=-1"]) == 2
    assert "service.gpus" in capsys.readouterr().err


def test_cli_unknown_stage_exits_2(capsys):
    assert main(["validate", "--spec", ACK, "--stages", "prepare,warp", "--no-prefect"]) == 2
    assert "warp" in capsys.readouterr().err


def test_cli_unreachable_api_server_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    kc = _unreachable_kubeconfig(tmp_path)
    rc = main(["validate", "--spec", ACK, "--stages", "prepare", "--no-prefect", "--set", f"cluster.kubeconfig={kc}",
               "--set", "cluster.context=ctx"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "unreachable" in err
    report = (tmp_path / "reports" / "latest" / "report.json").read_text()
    assert '"verdict": "fail"' in report


def test_cli_wrong_context_exits_2(tmp_path, capsys):
    kc = _unreachable_kubeconfig(tmp_path)
    rc = main(["validate", "--spec", ACK, "--stages", "prepare", "--no-prefect", "--set", f"cluster.kubeconfig={kc}",
               "--set", "cluster.context=no-such-context"])
    assert rc == 2
    assert "no-such-context" in capsys.readouterr().err


def test_cli_selected_stage_that_does_not_exist_fails_loudly(tmp_path, capsys, monkeypatch):
    """A stage that is not implemented must never pass: selecting it is exit 2 with its name."""
    import dataclasses

    from tasks import stages
    from tasks.errors import StageNotImplemented

    def not_built(_ctx):
        raise StageNotImplemented("stage `verify` is not implemented yet; select the stages to run with --stages")

    monkeypatch.setitem(stages.BY_NAME, "verify", dataclasses.replace(stages.BY_NAME["verify"], run=not_built))
    monkeypatch.setenv("TIDEGATE_REPORTS_DIR", str(tmp_path / "reports"))
    rc = main(["validate", "--spec", LOCAL, "--stages", "verify", "--no-prefect"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "verify" in err and "not implemented" in err
    assert '"status": "error"' in (tmp_path / "reports" / "latest" / "report.json").read_text()


def test_cli_testbed_logs_unknown_component_exits_2(capsys):
    assert main(["testbed", "logs", "no-such-component"]) == 2
    assert "no-such-component" in capsys.readouterr().err
