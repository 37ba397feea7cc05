"""The run subcommands of ``tidegate``: validate, plan, stage, cleanup, report. Each returns an exit
code or raises a TidegateError. (``testbed`` is in flows/testbed_cmd.py, ``gate`` in
flows/gatecmd.py, the Prefect server's ``deployments``, ``blocks``, ``automations`` and
``worker`` in flows/prefect_admin.py.)"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tasks.errors import SpecError
from tasks.names import STAGE_NAMES
from tasks.profile import LOCAL_KUBECONFIG, local_profile_dir, resolve_profile


def _load(args: argparse.Namespace):
    from tasks.spec import load_spec

    sets = list(args.set or [])
    if getattr(args, "repeat", None) is not None:
        sets.append(f"load.repeat={args.repeat}")
    return load_spec(args.spec, sets)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "kubernetes", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _load(args)
    from flows.validation import run_local
    from tasks.stages import normalize_stages

    stages = normalize_stages(args.stages)
    _setup_logging(args.verbose)
    import time

    began = time.time()
    try:
        outcome = run_local(spec, stages, use_prefect=not args.no_prefect, adopt=args.adopt)
    finally:  # also after a failed gate or stage: the figures the run has, then its one-line verdict
        _print_summary(began)
    print(f"tidegate: {outcome.verdict.upper()} run {outcome.run_id}; report {outcome.report_dir}/report.html")
    return outcome.exit_code


SUMMARY_FIGURES = (
    ("requests", "load.requests", "{:.0f}"), ("error rate", "load.error_rate", "{:.2%}"),
    ("TTFT p50 / p95 (ms)", ("load.ttft_p50_ms", "load.ttft_p95_ms"), "{:.0f}"),
    ("e2e p95 (ms)", "load.e2e_p95_ms", "{:.0f}"), ("SLO attainment", "load.slo_attainment", "{:.1%}"),
    ("achieved / requested rate", ("load.generator.achieved_rps", "load.generator.requested_rps"), "{:.2f}/s"),
    ("HPA max replicas", "elasticity.hpa_max_replicas", "{:.0f}"),
    ("cloud pods max", "elasticity.cloud_pods_max", "{:.0f}"),
    ("first cloud pod Ready (s)", "elasticity.time_to_first_cloud_pod_ready_s", "{:.1f}"),
    ("back to IDC", "elasticity.scale_in_back_to_idc", "{}"),
    ("cost of the run", "cost.cost_run", "{:.4f}"),
)


def _print_summary(began: float) -> None:
    """The run's key figures and gate rules as a table on stdout (from reports/latest/report.json, when
    that run started after ``began``)."""
    import json

    from tasks.gate import lookup
    from tasks.report import reports_root

    path = reports_root() / "latest" / "report.json"
    try:
        doc = json.loads(path.read_text())
        if path.stat().st_mtime < began:
            return
    except (OSError, ValueError):
        return

    def fmt(key, pattern: str) -> str:
        keys = key if isinstance(key, tuple) else (key,)
        vals = [lookup(doc, k) for k in keys]
        out = []
        for v in vals:
            if v is None:
                out.append("-")
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                out.append(str(v))
            else:
                out.append(pattern.format(v))
        return " / ".join(out)

    rows = [(label, fmt(key, pattern)) for label, key, pattern in SUMMARY_FIGURES]
    rows = [r for r in rows if r[1].strip("- /")]
    width = max([len(label) for label, _ in rows] + [10])
    print(f"\nrun {doc.get('run_id')}: {str(doc.get('verdict', '')).upper()}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    for rule in doc.get("gate") or []:
        print(f"  gate {rule.get('status', ''):<12} {rule.get('rule')} = {rule.get('value')} "
              f"(want {rule.get('op')} {rule.get('threshold')})")
    for reason in doc.get("inconclusive_reasons") or []:
        print(f"  inconclusive: {reason}")


def cmd_plan(args: argparse.Namespace) -> int:
    """Render every manifest and the preflight's checks; then (unless ``--offline``) run the
    read-only preflight against the cluster, as validate would: exit 2 on a failed check."""
    spec = _load(args)
    from tasks.render import render_admin_plan, render_manifests, render_plan
    from tasks.stages import check_inputs, normalize_stages

    if args.admin:
        print(render_admin_plan(spec), flush=True)
        return 0
    print(render_plan(spec, "plan"), flush=True)
    if args.offline:
        return 0
    check_inputs(spec, normalize_stages(spec.stages))  # this machine: the model source, the load shape
    from tasks.cluster import preflight
    from tasks.kube import Kube

    c = spec.cluster
    kube = Kube.connect(kubeconfig=resolve_profile(spec).kubeconfig, context=c.context, in_cluster=c.in_cluster)
    report = preflight(kube, spec)  # read-only: ClusterError (exit 2) names the failed check
    from tasks.ownership import Ledger, check_free

    # read-only too: an object of the run's names that exists stops here as it would stop the run
    check_free(kube, [o for o in render_manifests(spec, "plan") if o["kind"] != "Namespace"], Ledger(None))
    warn = f"; warnings: {'; '.join(report.warnings)}" if report.warnings else ""
    print(f"tidegate: preflight passed on {report.server} ({report.server_version}): IDC "
          f"{report.idc.ready_nodes} Ready nodes/{report.idc.gpus_allocatable} GPUs, elastic {report.elastic.nodes} "
          f"nodes (autoscaler group known: {report.elastic.autoscaler_group_known}){warn}", file=sys.stderr)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    spec = _load(args)
    from tasks import staging

    _setup_logging(args.verbose)
    staged = staging.stage_model_for_spec(spec, source=args.source)
    print(staged.summary())
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Delete what run ``--run-id`` recorded creating (its ledger, ``reports/<run id>/objects.json``),
    by uid; nothing else."""
    from flows.runid import check_run_id
    from tasks.kube import Kube
    from tasks.ownership import Ledger, delete_owned
    from tasks.report import reports_root

    check_run_id(args.run_id)
    ledger = Ledger.load(reports_root() / args.run_id, args.run_id)
    kubeconfig, context, in_cluster = args.kubeconfig, args.context, False
    if args.spec:
        spec = _load(args)
        c = spec.cluster
        kubeconfig = kubeconfig or resolve_profile(spec).kubeconfig
        context, in_cluster = context or c.context, c.in_cluster
    if not kubeconfig and not in_cluster:
        kubeconfig = str(local_profile_dir() / LOCAL_KUBECONFIG)
    if not ledger.entries:
        print(f"tidegate: run {args.run_id} recorded no object; nothing to remove")
        return 0
    kube = Kube.connect(kubeconfig=kubeconfig, context=context, in_cluster=in_cluster)
    kube.ping()
    deleted = delete_owned(kube, ledger, timeout_s=args.timeout)
    print(f"tidegate: removed {len(deleted)} objects of run {args.run_id} (of {len(ledger.entries)} it created)")
    for d in deleted:
        print(f"  {d}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``tidegate report schema``: the JSON Schema of report.json (``--check FILE``: exit 1 when
    FILE, e.g. reports/schema/report.schema.json, differs from it). ``tidegate report export RUN
    --format llmd [--out FILE]``: the run (a report directory or a run id under reports/) as an
    llm-d Benchmark Report v0.2 (tasks/export.py), on stdout or into FILE. ``tidegate report open
    RUN [--browser]``: report.html rendered again from the run's report.json and CSVs into its
    directory; prints its path. ``tidegate report compare RUN RUN [--out FILE] [--json]``: a
    self-contained page of the two runs' key figures side by side, their verdicts and dashboards;
    prints its path (``--json``: the comparison on stdout instead). A run that cannot be read: exit 2,
    naming it."""
    if args.action != "schema" and args.check:
        raise SpecError(f"--check goes with `report schema`, not `report {args.action}`")
    wanted = {"schema": 0, "export": 1, "open": 1, "compare": 2}[args.action]
    if len(args.runs) != wanted:
        usage = {"schema": "tidegate report schema [--check FILE]",
                 "export": "tidegate report export reports/<run id> --format llmd",
                 "open": "tidegate report open reports/<run id> [--browser]",
                 "compare": "tidegate report compare RUN RUN [--out FILE] [--json]"}[args.action]
        raise SpecError(f"`report {args.action}` takes {wanted} run{'s' if wanted != 1 else ''} "
                        f"(a report directory or a run id under reports/), not {len(args.runs)}", hint=usage)
    if args.action == "export":
        return _report_export(args)
    if args.action == "open":
        return _report_open(args)
    if args.action == "compare":
        return _report_compare(args)
    from tasks.report_model import report_schema_text

    text = report_schema_text()
    if args.check:
        try:
            committed = Path(args.check).read_text()
        except OSError as exc:
            raise SpecError(f"--check: cannot read {args.check}: {exc.strerror}",
                            hint="write it with `tidegate report schema > FILE`") from None
        if committed != text:
            print(f"tidegate: {args.check} differs from the report model (tasks/report_model.py); "
                  f"regenerate it with `tidegate report schema > {args.check}` and review the change",
                  file=sys.stderr)
            return 1
        print(f"tidegate: {args.check} matches the report model", file=sys.stderr)
        return 0
    sys.stdout.write(text)
    return 0


def _write_out(path: str, text: str, what: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise SpecError(f"--out: cannot write {path}: {exc.strerror}") from None
    print(f"tidegate: wrote {path} ({what})", file=sys.stderr)


def _report_export(args: argparse.Namespace) -> int:
    from tasks.export import export_run

    text = export_run(args.runs[0], args.format)
    if args.out:
        _write_out(args.out, text, args.format)
        return 0
    sys.stdout.write(text)
    return 0


def _report_open(args: argparse.Namespace) -> int:
    from tasks.report import open_run

    page = open_run(args.runs[0])
    print(page)
    if args.browser:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            print(f"tidegate: no browser could be started; open {page}", file=sys.stderr)
    return 0


def _report_compare(args: argparse.Namespace) -> int:
    import json

    from tasks.report import compare_html, compare_runs, read_run, redact, secret_values

    first, second = (read_run(run) for run in args.runs)  # SpecError (exit 2) names a run it cannot read
    comparison = compare_runs(first, second)
    if args.json:
        text = redact(json.dumps(comparison, indent=2, ensure_ascii=False), secret_values()) + "\n"
        if args.out:
            _write_out(args.out, text, "comparison, JSON")
        else:
            sys.stdout.write(text)
        return 0
    out = Path(args.out) if args.out else (
        second.directory / f"compare-{first.report.run_id}-vs-{second.report.run_id}.html")
    try:
        out.write_text(redact(compare_html(first, second, comparison), secret_values()))
    except OSError as exc:
        raise SpecError(f"cannot write the comparison page {out}: {exc.strerror}", hint="give --out FILE") from None
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def spec_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--spec", required=True, help="RolloutSpec YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a spec field, e.g. service.max_replicas=4")
        p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("validate", help="run the validation flow end to end")
    spec_args(p)
    p.add_argument("--stages", help=f"comma-separated subset: {','.join(STAGE_NAMES)}")
    p.add_argument("--no-prefect", action="store_true", help="run the stages without Prefect (debugging)")
    p.add_argument("--adopt", action="append", default=[], metavar="KIND/NAME",
                   help="take over an existing object of the run's names (it is changed, then deleted at "
                        "teardown; the report records it); without it an existing object stops the run")
    p.add_argument("--repeat", type=int, metavar="N",
                   help="run the spike N times in this validation for confidence intervals of the per-run "
                        "figures (the same as --set load.repeat=N)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plan", help="render every manifest and run the read-only preflight; changes nothing")
    spec_args(p)
    p.add_argument("--offline", action="store_true", help="only render: do not connect to the cluster")
    p.add_argument("--admin", action="store_true",
                   help="print the administrator's part instead (ServiceAccount, least-privilege RBAC, the "
                        "model's PV/PVC, how to create the OSS Secret), for `kubectl apply -f -`")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("stage", help="only stage the model weights")
    spec_args(p)
    p.add_argument("--source", help="local directory of weights (overrides model.source)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("cleanup", help="remove what a dead run created (its ledger in reports/<run id>/), by uid")
    p.add_argument("--run-id", required=True)
    p.add_argument("--spec", help="take the cluster connection from this spec")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--kubeconfig")
    p.add_argument("--context")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait until the objects are gone")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("report", help="recorded runs: `report schema` prints report.json's JSON Schema; "
                                      "`report export RUN --format llmd` writes a run in another tool's format; "
                                      "`report open RUN` renders report.html again; `report compare RUN RUN` "
                                      "writes a comparison page")
    p.add_argument("action", choices=["schema", "export", "open", "compare"])
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="export, open: one run, compare: two: a report directory or a run id under reports/ "
                        "(TIDEGATE_REPORTS_DIR)")
    p.add_argument("--check", metavar="FILE", help="schema: exit 1 if FILE differs from the schema (CI)")
    p.add_argument("--format", choices=["llmd"], default="llmd",
                   help="export: llmd = llm-d-benchmark's Benchmark Report, schema v0.2")
    p.add_argument("--out", metavar="FILE", help="export: write FILE instead of stdout; compare: the page's path "
                                                 "(default: compare-A-vs-B.html in the second run's directory)")
    p.add_argument("--browser", action="store_true", help="open: also open the page in a web browser")
    p.add_argument("--json", action="store_true", help="compare: print the comparison as JSON instead")
    p.set_defaults(func=cmd_report)
