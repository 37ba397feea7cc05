"""requestgen: length distributions, unique and reproducible prompts, JSONL and trace replay
(Azure CSV, plain CSV, Mooncake JSONL) and the errors that name a bad file's line and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import SpecError
from tasks.requestgen import RequestSource, describe, draw_lengths, request_config
from tasks.spec import LoadSpec

pytestmark = pytest.mark.unit

AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2023-11-16 18:15:46.6805900,374,44\n"
         "2023-11-16 18:15:50.9951690,396,109\n"
         "2023-11-16 18:15:50.9951690,879,0\n"
         "2023-11-16 18:15:51.4393290,91,7\n")
MOONCAKE = ('{"timestamp": 0, "input_length": 655, "output_length": 52, "hash_ids": [46, 47]}\n'
            '{"timestamp": 10535, "input_length": 672, "output_length": 26, "hash_ids": [46, 47]}\n'
            '{"timestamp": 10535, "input_length": 12, "output_length": 3, "hash_ids": [46]}\n')


def load(**requests) -> LoadSpec:
    return LoadSpec(requests=requests)


def source(spec: LoadSpec, seed: int = 7, worker: int = 0) -> RequestSource:
    return RequestSource.from_config(request_config(spec, "tide-model"), seed=seed, worker=worker)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def draws(spec: dict, n: int = 10_000, seed: int = 3) -> np.ndarray:
    return draw_lengths(spec, np.random.default_rng(seed), n)


def length(**kw) -> dict:
    return {"dist": "fixed", "mean": 128, "std": 0, "min": 1, "max": 32_768, **kw}


# -- distributions -------------------------------------------------------------------------------
def test_lognormal_matches_mean_and_std_of_the_count() -> None:
    values = draws(length(dist="lognormal", mean=512, std=128))
    assert values.dtype == np.int64 and values.min() >= 1
    assert values.mean() == pytest.approx(512, rel=0.02)
    assert values.std() == pytest.approx(128, rel=0.05)


def test_normal_mean_std_and_clipping() -> None:
    values = draws(length(dist="normal", mean=200, std=40))
    assert values.mean() == pytest.approx(200, rel=0.02) and values.std() == pytest.approx(40, rel=0.05)
    clipped = draws(length(dist="normal", mean=100, std=100, min=50, max=150))
    assert clipped.min() == 50 and clipped.max() == 150
    assert (clipped == 50).mean() == pytest.approx(0.31, abs=0.03)  # P(z < -0.5)


def test_uniform_covers_min_to_max_and_fixed_is_the_mean() -> None:
    values = draws(length(dist="uniform", min=10, max=20))
    assert set(values.tolist()) == set(range(10, 21))
    assert values.mean() == pytest.approx(15, rel=0.02)
    assert set(draws(length(mean=99.6)).tolist()) == {100}


def test_all_counts_are_at_least_one() -> None:
    values = draws(length(dist="normal", mean=2, std=50, min=1, max=10))
    assert values.min() == 1


def test_mean_outside_bounds_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"load.requests.input_tokens.mean: 5000 is outside \[min 1, max 4096\]"):
        request_config(load(input_tokens={"dist": "normal", "mean": 5000, "std": 10, "max": 4096}), "m")


def test_source_lengths_follow_the_specs() -> None:
    src = source(load(input_tokens={"dist": "lognormal", "mean": 400, "std": 100},
                      output_tokens={"dist": "uniform", "min": 16, "max": 64}))
    got = [src.next() for _ in range(10_000)]
    inputs = np.array([n for _, _, n in got])
    outputs = np.array([m for _, m, _ in got])
    assert inputs.mean() == pytest.approx(400, rel=0.03) and inputs.std() == pytest.approx(100, rel=0.06)
    assert outputs.min() == 16 and outputs.max() == 64
    # a prompt of N tokens has N * words_per_token words (the request number counts as one)
    for prompt, _, tokens in got[:200]:
        assert len(prompt.split()) == max(1, round(tokens * 0.75))


# -- uniqueness, reproducibility, workers ----------------------------------------------------------
def test_synthetic_prompts_are_unique_over_ten_thousand() -> None:
    for spec in (load(), load(input_tokens={"dist": "fixed", "mean": 64})):
        src = source(spec)
        prompts = [src.next()[0] for _ in range(10_000)]
        assert len(set(prompts)) == 10_000
        assert prompts[0].startswith("#0-0 ") and prompts[9_999].startswith("#0-9999 ")


def test_default_prompt_and_max_tokens_when_lengths_unset() -> None:
    spec = LoadSpec(prompt="Why is the sea salty?", max_tokens=77)
    prompt, max_tokens, tokens = source(spec, worker=3).next()
    assert (prompt, max_tokens) == ("#3-0 Why is the sea salty?", 77)
    assert tokens == round(5 / 0.75) + 1


def test_repeat_prompts_sends_the_same_text() -> None:
    src = source(LoadSpec(requests={"repeat_prompts": True}))
    assert {src.next()[0] for _ in range(100)} == {LoadSpec().prompt}
    src = source(load(repeat_prompts=True, input_tokens={"dist": "fixed", "mean": 100}))
    assert len({src.next()[0] for _ in range(100)}) == 1


def test_same_seed_same_requests_other_seed_other_lengths() -> None:
    spec = load(input_tokens={"dist": "normal", "mean": 300, "std": 80}, output_tokens={"dist": "lognormal",
                                                                                      "mean": 100, "std": 50})
    a, b, c = source(spec, seed=11), source(spec, seed=11), source(spec, seed=12)
    run_a = [a.next() for _ in range(5_000)]
    assert run_a == [b.next() for _ in range(5_000)]
    assert [r[1:] for r in run_a[:50]] != [c.next()[1:] for _ in range(50)]


def test_workers_never_share_a_prompt_and_draw_differently() -> None:
    spec = load(input_tokens={"dist": "uniform", "min": 8, "max": 512})
    w0, w1 = source(spec, worker=0), source(spec, worker=1)
    r0 = [w0.next() for _ in range(5_000)]
    r1 = [w1.next() for _ in range(5_000)]
    assert not {p for p, _, _ in r0} & {p for p, _, _ in r1}
    assert [n for _, _, n in r0[:100]] != [n for _, _, n in r1[:100]]


def test_config_is_json_and_describe_is_one_line() -> None:
    cfg = request_config(load(input_tokens={"dist": "lognormal", "mean": 512, "std": 128}), "m")
    assert json.loads(json.dumps(cfg)) == cfg
    assert describe(cfg) == ("synthetic prompts, input lognormal(mean 512, std 128, clipped to 1..32768) tokens "
                             "by 0.75 words/token, output fixed 128, unique (request number first)")


def test_tokenizer_without_tokenizers_or_transformers_is_a_spec_error(tmp_path: Path) -> None:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tokenizers is installed")
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers is installed")
    (tmp_path / "tok").mkdir()
    with pytest.raises(SpecError, match="load.requests.tokenizer: neither the tokenizers nor the transformers"):
        request_config(load(tokenizer=str(tmp_path / "tok")), "m")


def test_a_tokenizer_sizes_prompts_by_its_own_ratio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a stand-in tokenizer of two tokens per word: N tokens are N / 2 words
    monkeypatch.setattr("tasks.requestgen._load_tokenizer",
                        lambda directory: lambda texts: [2 * len(t.split()) for t in texts])
    cfg = request_config(load(tokenizer=str(tmp_path), input_tokens={"dist": "fixed", "mean": 200}), "m")
    assert cfg["vocab_words_per_token"] == 0.5
    prompt, _, tokens = RequestSource.from_config(cfg, seed=1).next()
    assert tokens == 200 and len(prompt.split()) == 100
    assert "sized by the tokenizer in" in describe(cfg)


# -- JSONL prompts ----------------------------------------------------------------------------------
def test_jsonl_prompts_cycle_in_order_with_own_max_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.jsonl", '{"prompt": "one two three"}\n\n'
                                            '{"prompt": "four", "max_tokens": 9}\n')
    spec = LoadSpec(max_tokens=50, requests={"source": "jsonl", "path": str(path)})
    cfg = request_config(spec, "m")
    assert cfg["file"]["rows"] == 2 and len(json.dumps(cfg)) < 2_000
    src = RequestSource.from_config(cfg, seed=0, worker=1)
    assert [src.next() for _ in range(3)] == [("#1-0 one two three", 50, 5), ("#1-1 four", 9, 2),
                                              ("#1-2 one two three", 50, 5)]
    assert describe(cfg).startswith("JSONL prompts from prompts.jsonl (2 lines, cycled in order)")
    repeated = source(LoadSpec(requests={"source": "jsonl", "path": str(path), "repeat_prompts": True}))
    assert repeated.next()[0] == "one two three"


def test_jsonl_changed_after_planning_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "p.jsonl", '{"prompt": "a"}\n')
    cfg = request_config(load(source="jsonl", path=str(path)), "m")
    path.write_text('{"prompt": "b"}\n')
    with pytest.raises(SpecError, match="changed since the run was planned"):
        RequestSource.from_config(cfg, seed=0)


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "ok"}\n{"prompt": ""}\n', r"line 2, field prompt: empty"),
    ('{"prompt": "ok"}\n\n{"text": "x"}\n', r"line 3, field text: unknown field"),
    ('{"max_tokens": 3}\n', r"line 1, field prompt: missing"),
    ('{"prompt": "a", "max_tokens": -1}\n', r"line 1, field max_tokens: must be >= 1 \(got -1\)"),
    ('{"prompt": "a", "max_tokens": 2.5}\n', r"line 1, field max_tokens: must be a non-negative integer"),
    ('{"prompt": "a"}\n{"prompt": 3}\n', r"line 2, field prompt: must be a string"),
    ('{"prompt": "a"\n', r"line 1: not JSON"),
    ('["a"]\n', r"line 1: expected a JSON object"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n', r"use source: trace"),
    ("\n\n", r"file is empty"),
])
def test_jsonl_errors_name_the_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(SpecError, match=message) as err:
        request_config(load(source="jsonl", path=str(path)), "m")
    assert f"request file {path} (load.requests.path)" in str(err.value)


# -- traces ------------------------------------------------------------------------------------------
def test_azure_trace_rows_replayed_in_order(tmp_path: Path) -> None:
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv", AZURE)
    cfg = request_config(load(source="trace", path=str(path)), "m")
    assert cfg["file"]["format"] == "azure" and cfg["file"]["rows"] == 4
    src = RequestSource.from_config(cfg, seed=5, worker=2)
    got = [src.next() for _ in range(5)]
    assert [(m, n) for _, m, n in got] == [(44, 374), (109, 396), (1, 879), (7, 91), (44, 374)]
    assert [len(p.split()) for p, _, _ in got] == [round(n * 0.75) for _, _, n in got]
    assert got[0][0].startswith("#2-0 ") and got[4][0].startswith("#2-4 ") and got[0][0] != got[4][0]
    assert src.trace_offsets_s is not None
    assert src.trace_offsets_s.tolist() == pytest.approx([0.0, 4.314579, 4.314579, 4.758739])
    assert describe(cfg).startswith("Azure LLM inference trace AzureLLMInferenceTrace_conv.csv (4 rows")


def test_mooncake_trace_detected_by_extension_and_content(tmp_path: Path) -> None:
    for name in ("mooncake_trace.jsonl", "trace.txt"):
        path = write(tmp_path, name, MOONCAKE)
        cfg = request_config(load(source="trace", path=str(path)), "m")
        assert cfg["file"]["format"] == "mooncake"
        src = RequestSource.from_config(cfg, seed=0)
        assert [src.next()[1:] for _ in range(4)] == [(52, 655), (26, 672), (3, 12), (52, 655)]
        assert src.trace_offsets_s.tolist() == [0.0, 10.535, 10.535]


def test_plain_csv_trace_with_seconds(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "timestamp,input_tokens,output_tokens,extra\n0.5,10,2,x\n1.5,20,4,y\n")
    cfg = request_config(load(source="trace", path=str(path)), "m")
    assert cfg["file"]["format"] == "csv"
    src = RequestSource.from_config(cfg, seed=0)
    assert [src.next()[1:] for _ in range(2)] == [(2, 10), (4, 20)]
    assert src.trace_offsets_s.tolist() == [0.0, 1.0]


def test_trace_of_a_hundred_thousand_rows_keeps_the_config_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inputs, outputs = rng.integers(1, 4000, 100_000), rng.integers(1, 500, 100_000)
    lines = [f"{i * 0.01:.2f},{a},{b}" for i, (a, b) in enumerate(zip(inputs, outputs))]
    path = write(tmp_path, "big.csv", "timestamp,input_tokens,output_tokens\n" + "\n".join(lines) + "\n")
    cfg = request_config(load(source="trace", path=str(path)), "m")
    assert cfg["file"]["rows"] == 100_000 and len(json.dumps(cfg)) < 2_000
    src = RequestSource.from_config(cfg, seed=0, worker=0)
    got = [src.next() for _ in range(1_000)]
    assert [n for _, _, n in got] == inputs[:1_000].tolist()
    assert len({p for p, _, _ in got}) == 1_000


AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n",
     r"row 1, column GeneratedTokens: missing from the header"),
    ("a.csv", "time,foo,bar\n1,2,3\n", r"row 1: header must be TIMESTAMP,ContextTokens,GeneratedTokens"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,3,1\n2023-11-16 18:15:47,x,1\n",
     r"row 3, column ContextTokens: must be a non-negative integer \(got 'x'\)"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,3,-4\n", r"row 2, column GeneratedTokens: must be >= 0 \(got -4\)"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,3,1\n\n2023-11-16 18:15:45,3,1\n",
     r"row 4, column TIMESTAMP: '2023-11-16 18:15:45' is before the previous row's"),
    ("a.csv", AZURE_HEAD + "yesterday,3,1\n", r"row 2, column TIMESTAMP: not a date-time or number of seconds"),
    ("a.csv", AZURE_HEAD + "2023-11-16 18:15:46,3\n", r"row 2: 2 fields, the header has 3"),
    ("a.csv", AZURE_HEAD, r"row 1: a header and no data rows"),
    ("a.csv", "", r"file is empty"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 9, "input_length": 5}\n',
     r"line 2, field output_length: missing"),
    ("m.jsonl", ('{"timestamp": 5, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 4, "input_length": 5, "output_length": 1}\n'),
     r"line 2, field timestamp: 4 is before the previous line's 5"),
    ("m.jsonl", '{"timestamp": 0, "input_length": "many", "output_length": 1}\n',
     r"line 1, field input_length: must be a non-negative integer"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 2000000, "output_length": 1}\n',
     r"line 1, field input_length: 2000000 tokens is more than 1000000"),
])
def test_trace_errors_name_the_row_and_column(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(SpecError, match=message) as err:
        request_config(load(source="trace", path=str(path)), "m")
    assert f"request file {path} (load.requests.path)" in str(err.value)


def test_oversized_and_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "t.csv", AZURE)
    monkeypatch.setattr("tasks.requestgen.MAX_REQUEST_FILE_BYTES", 100)
    with pytest.raises(SpecError, match=r"t.csv \(load.requests.path\): file too large \(\d+ bytes, at most 100\)"):
        request_config(load(source="trace", path=str(path)), "m")
    with pytest.raises(SpecError, match=r"nope.csv \(load.requests.path\): cannot read"):
        request_config(load(source="trace", path=str(tmp_path / "nope.csv")), "m")


def test_lengths_other_than_the_trace_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", AZURE)
    with pytest.raises(SpecError, match="load.requests.output_tokens: applies to source synthetic only"):
        request_config(load(source="trace", path=str(path), output_tokens={"mean": 10}), "m")
    with pytest.raises(SpecError, match="load.requests.input_tokens: applies to source synthetic only"):
        request_config(load(source="jsonl", path=str(path), input_tokens={"mean": 10}), "m")
