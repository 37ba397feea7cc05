"""Bad input is refused before anything is created: the bad-spec corpora through the CLI (exit
2, exactly one line on stderr, no run started), oversized and malicious values, and
property-based fuzzing of the spec model and of spec YAML text with hypothesis."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.errors import SpecError
from tasks.spec import RolloutSpec, apply_overrides, load_spec, spec_from_dict
from tests.reliability.helpers import LOCAL_SPEC, ROOT, RUN_STARTED, stderr_lines

pytestmark = pytest.mark.reliability

CORPORA = [ROOT / "tests" / "unit" / "bad_specs", Path(__file__).parent / "bad_specs"]
BAD_SPECS = sorted(p for d in CORPORA for p in d.glob("*.yaml"))
# values in corpus files that must never be echoed back (credentials smuggled into URLs)
NEVER_ECHOED = ("hunter2", "CanaryS3cretValue", "LTAI5tCanaryKeyId")
CLI_BOUND_S = 15.0  # one refusal, Python start-up included, on a busy 2-core machine
TEN_MB = 10 * 1024 * 1024
FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _expect(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("# expect:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path} has no '# expect:' line")


def _refuse(bed, spec: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    """``tidegate validate --spec`` pointed at the private bed (were a spec accepted, its run
    would land there, where the suite looks for it)."""
    env = dict(os.environ, TIDEGATE_TESTBED_DIR=str(bed.cfg.state_dir), KUBECONFIG=str(bed.cfg.kubeconfig),
               TIDEGATE_REPORTS_DIR=str(bed.work / "bad-input-reports"))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--spec", str(spec), "--no-prefect", *extra],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return r, round(time.monotonic() - t0, 2)


@pytest.fixture(scope="module")
def corpus_results(bed):
    """Every corpus file through the CLI, a few at a time."""
    with cf.ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(BAD_SPECS, pool.map(lambda p: _refuse(bed, p), BAD_SPECS)))


def _labelled_objects(bed) -> list[str]:
    from tasks.cluster import RUN_KINDS_CLUSTER, RUN_KINDS_NAMESPACED
    from tasks.names import RUN_LABEL

    kube = bed.admin()
    found = []
    for api_version, kind in RUN_KINDS_NAMESPACED + RUN_KINDS_CLUSTER:
        if kube.has_api(api_version, kind):
            found += [f"{kind}/{o['metadata']['name']}" for o in kube.list(api_version, kind, label_selector=RUN_LABEL)]
    return found


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_bad_spec_is_refused_by_the_cli(path: Path, corpus_results, case):
    expect = _expect(path)
    case.describe(f"bad spec {path.parent.parent.name}/{path.name}",
                  f"exit 2, one stderr line containing '{expect[:60]}', no run started")
    r, seconds = corpus_results[path]
    case.seconds = seconds
    lines = stderr_lines(r.stderr)
    case.observe(f"exit {r.returncode}: {lines[0][:160] if lines else '(no stderr)'}")
    assert r.returncode == 2, r.stderr[-800:]
    assert len(lines) == 1, r.stderr[-800:]
    assert lines[0].startswith("tidegate: spec ") and expect in lines[0], lines[0]
    assert not RUN_STARTED.search(r.stderr), "a run was started for a bad spec"
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not any(s in r.stderr for s in NEVER_ECHOED), "a credential in the spec was echoed back"
    assert seconds < CLI_BOUND_S


def test_corpus_is_large_enough_and_created_nothing(bed, corpus_results, case):
    own = [p for p in BAD_SPECS if p.parent == CORPORA[1]]
    case.describe("bad-spec corpora: size, and nothing created on the cluster",
                  ">= 30 reliability cases; no object labelled with any run id on the test bed")
    left = _labelled_objects(bed)
    slowest = max(s for _, s in corpus_results.values())
    case.observe(f"{len(own)} reliability + {len(BAD_SPECS) - len(own)} unit cases, all through the CLI; "
                 f"slowest refusal {slowest:.1f}s; labelled objects on the bed: {left or 'none'}")
    assert len(own) >= 30
    assert left == []


# -- oversized values ---------------------------------------------------------------------------
def test_ten_megabyte_spec_file_is_refused_fast(bed, tmp_path, case):
    case.describe("10 MB spec file (a 10 MB prompt) through the CLI",
                  "exit 2 in seconds with 'file too large', nothing created")
    path = tmp_path / "huge.yaml"
    path.write_text(LOCAL_SPEC.read_text() + "\n# padding\n" + "#" * TEN_MB + "\n")
    r, seconds = _refuse(bed, path)
    lines = stderr_lines(r.stderr)
    case.seconds = seconds
    case.observe(f"exit {r.returncode} in {seconds}s: {lines[0][:140] if lines else ''}")
    assert r.returncode == 2 and len(lines) == 1 and "file too large" in lines[0]
    assert seconds < CLI_BOUND_S


def test_ten_megabyte_string_is_refused_on_every_path(bed, tmp_path, case):
    """A 10 MB string in a spec field: from a file (YAML under the size limit cannot hold it, so
    the dict path that Prefect parameters and the Python API use), through ``--set`` (argv holds
    at most 128 KiB, so the largest value the kernel lets through is tried via the CLI and 10 MB
    in process), and through pydantic directly (the Prefect UI form's validation)."""
    case.describe("10 MB string in spec fields (dict, --set, Prefect form path)",
                  "SpecError / ValidationError naming the field, each in well under a second; CLI exit 2")
    big = "x" * TEN_MB
    base = yaml.safe_load(LOCAL_SPEC.read_text())
    timings = []
    for dotted in ("name", "model.served_name", "service.image", "service.command", "load.prompt", "ingress.url",
                   "storage.oss.prefix", "cluster.kubeconfig"):
        data = apply_overrides(base, [f"{dotted}=x"])
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = big
        t0 = time.monotonic()
        with pytest.raises(SpecError) as info:
            spec_from_dict(data, "fuzz")
        timings.append(time.monotonic() - t0)
        assert "string too long" in str(info.value) and "\n" not in str(info.value)
        t0 = time.monotonic()
        with pytest.raises(ValueError):
            RolloutSpec.model_validate(data)  # what Prefect's parameter validation runs
        timings.append(time.monotonic() - t0)
    t0 = time.monotonic()
    with pytest.raises(SpecError, match="value too long"):
        apply_overrides(base, [f"load.prompt={big}"])
    timings.append(time.monotonic() - t0)
    r, seconds = _refuse(bed, LOCAL_SPEC, "--set", "load.prompt=" + "y" * 120_000)
    lines = stderr_lines(r.stderr)
    case.seconds = round(sum(timings) + seconds, 2)
    case.observe(f"8 fields x 2 paths refused, slowest {max(timings) * 1000:.0f} ms; --set of 120 kB via "
                 f"the CLI: exit {r.returncode} in {seconds}s ({lines[0][:100] if lines else ''})")
    assert max(timings) < 1.0
    assert r.returncode == 2 and len(lines) == 1 and "value too long" in lines[0]


def test_not_utf8_and_binary_files_are_refused(bed, tmp_path, case):
    case.describe("non-UTF-8 / binary spec files through the CLI", "exit 2, one line each")
    observed = []
    for name, blob in (("latin1.yaml", "name: caf\xe9\n".encode("latin-1")),
                       ("binary.yaml", bytes(range(256)) * 4),
                       ("zip-bomb-like.yaml", b"PK\x03\x04" + os.urandom(2048))):
        path = tmp_path / name
        path.write_bytes(blob)
        r, seconds = _refuse(bed, path)
        lines = stderr_lines(r.stderr)
        observed.append(f"{name}: exit {r.returncode} ({lines[0].split('.yaml: ', 1)[-1][:60] if lines else ''})")
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("tidegate: spec "), r.stderr[-500:]
    case.observe("; ".join(observed))


# -- property-based fuzzing ---------------------------------------------------------------------
def _leaf_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaf_paths(v, prefix + (i,))
    yield prefix


BASE_DOC = yaml.safe_load(LOCAL_SPEC.read_text())
PATHS = [p for p in _leaf_paths(BASE_DOC) if p]
NASTY_TEXT = st.sampled_from([
    "../etc", "a/b", "..", "x" * 64, "x" * 5000, "\x00", "UPPER", "-lead", "trail-", "a b", "${HOME}", "$(id)",
    "'; drop table x; --", "\u202e", "\ufeffqwen", "qwén", "http://u:p@h", "file:///etc/passwd", "*", "", "  ",
    "1e400", "NaN", "0x10", "-1", "True", "null", "\n", "\r\n", "\t", "{}", "[]", "!!python/name:os.system"])
JUNK = st.one_of(
    st.text(max_size=40), NASTY_TEXT, st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2))


def _mutate(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _check_accepted(spec: RolloutSpec) -> None:
    """An accepted spec is usable: it round-trips, and every name it renders is a valid name."""
    import re

    from tasks.render import render_manifests

    assert spec_from_dict(spec.model_dump(mode="json"), "roundtrip") == spec
    dns_subdomain = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    for obj in render_manifests(spec, "fuzz-run"):
        meta = obj["metadata"]
        assert dns_subdomain.match(meta["name"]) and len(meta["name"]) <= 253, meta["name"]
        assert ".." not in meta["name"] and "/" not in meta["name"]
        if meta.get("namespace"):
            assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", meta["namespace"]), meta["namespace"]


def _tally(case, outcome: str) -> None:
    """Count one hypothesis example on the test's report row."""
    counts = case.__dict__.setdefault("counts", {"refused": 0, "accepted": 0})
    counts[outcome] += 1
    case.observe(f"{sum(counts.values())} generated inputs: {counts['refused']} refused with one line, "
                 f"{counts['accepted']} accepted and usable, no other exception")


@settings(FUZZ, max_examples=300)
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), JUNK), min_size=1, max_size=3),
       extra_key=st.one_of(st.none(), st.tuples(st.sampled_from(["", "service", "load", "cluster", "storage.oss"]),
                                                st.text(min_size=1, max_size=12))))
def test_fuzzed_spec_dicts_are_refused_in_one_line_or_usable(mutations, extra_key, case):
    import copy

    case.describe("hypothesis: 1-3 random leaves of the spec replaced by junk (spec_from_dict, the dict path of "
                  "Prefect parameters)", "refused with one SpecError line naming the source, or accepted and "
                  "usable (round-trips, renders valid names); never another exception")

    doc = copy.deepcopy(BASE_DOC)
    for path, value in mutations:
        try:
            _mutate(doc, path, value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation replaced a parent
    if extra_key is not None:
        section, key = extra_key
        node = doc
        for part in filter(None, section.split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key not in node:
            node[key] = 1
    try:
        spec = spec_from_dict(doc, "fuzz")
    except SpecError as exc:
        msg = str(exc)
        assert msg.startswith("spec fuzz: ") and "\n" not in exc.one_line() and len(msg) < 2000, msg
        _tally(case, "refused")
        return
    _check_accepted(spec)
    _tally(case, "accepted")


_YAML_NOISE = list(":{}[]&*!|>'\"%@`\t\n#-?,.0\\~") + ["<<: ", "&a ", "*a", "!!", "---\n", "...\n", "\x00", "\u2028"]


@settings(FUZZ, max_examples=200)
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["insert", "delete", "replace"]),
                                st.sampled_from(_YAML_NOISE)), min_size=1, max_size=6))
def test_fuzzed_yaml_text_is_refused_in_one_line_or_usable(edits, tmp_path_factory, case):
    case.describe("hypothesis: YAML syntax noise inserted into / deleted from the example spec file (load_spec)",
                  "refused with one SpecError line naming the file, or accepted and usable; never another exception")
    text = LOCAL_SPEC.read_text()
    for where, op, noise in edits:
        i = int(where * len(text))
        if op == "insert":
            text = text[:i] + noise + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 + len(noise):]
        else:
            text = text[:i] + noise + text[i + len(noise):]
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(text, errors="surrogatepass")
    try:
        spec = load_spec(path)
    except SpecError as exc:
        assert "\n" not in exc.one_line() and str(exc).startswith(f"spec {path}"), str(exc)
        _tally(case, "refused")
        return
    _check_accepted(spec)
    _tally(case, "accepted")


@settings(FUZZ, max_examples=80)
@given(edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(_YAML_NOISE)), min_size=1, max_size=4))
def test_fuzzed_yaml_through_the_cli_exits_2_with_one_line(edits, tmp_path_factory, case):
    """The CLI's own mapping of errors to exit codes and one line (``plan``: touches nothing, so
    an accepted spec is harmless here)."""
    from flows.cli import main

    case.describe("hypothesis: YAML noise in the spec file through the CLI's entry point (tidegate plan)",
                  "exit 2 with exactly one stderr line, or exit 0 with the plan; never a traceback")
    text = LOCAL_SPEC.read_text()
    for where, noise in edits:
        i = int(where * len(text))
        text = text[:i] + noise + text[i:]
    path = tmp_path_factory.mktemp("cli-fuzz") / "spec.yaml"
    path.write_text(text, errors="surrogatepass")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(["plan", "--offline", "--spec", str(path)])
    if rc == 0:
        assert out.getvalue().startswith("# tidegate plan")
        _tally(case, "accepted")
        return
    lines = stderr_lines(err.getvalue())
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("tidegate: spec "), err.getvalue()[-500:]
    _tally(case, "refused")
