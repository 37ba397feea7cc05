"""requestgen: what each load request asks (its prompt, max_tokens and input length), drawn from
distributions or replayed from a file (``load.requests``).

Two halves, split across processes:

``request_config(load, served_name)``
    Runs in the parent before the run. Validates ``load.requests`` against the rest of the load
    section, reads and checks a JSONL or trace file in full (``SpecError`` naming the file, the
    line or row and the field or column), loads a tokenizer offline when one is named, and returns
    a small JSON-serialisable dict. A file is referenced by absolute path, size and sha256 (plus
    its row count and length statistics for the report), never copied into the dict, so a trace
    of 10^5 rows keeps the config a few hundred bytes.

``RequestSource.from_config(cfg, seed=..., worker=...)``
    Runs in each generator process. Reads the file once (refusing it if its sha256 changed),
    builds the prompt text once, and then ``next()`` returns ``(prompt, max_tokens,
    input_tokens_estimate)`` per request: a slice of a prebuilt string and a few buffered draws,
    no file or network access. Pure Python and numpy only (this module is imported inside the
    Locust subprocess: no gevent, locust or prefect).

Sources
    synthetic, ``input_tokens`` unset: ``load.prompt``. synthetic with ``input_tokens``: a text of
    about N tokens from a fixed vocabulary, N drawn per request. jsonl: the file's prompts in
    order, cycled (``{"prompt": str, "max_tokens": optional int}`` per line; blank lines skipped).
    trace: each row's input and output length, in order, cycled; the prompt is synthesised to the
    input length. Formats: the Azure LLM inference trace (CSV ``TIMESTAMP,ContextTokens,
    GeneratedTokens``, date-time stamps), a CSV ``timestamp,input_tokens,output_tokens`` (date-time
    or seconds), and Mooncake (JSONL ``timestamp`` in ms, ``input_length``, ``output_length``,
    ``hash_ids`` ignored: its shared prefixes are not reproduced). A ``.jsonl``/``.json`` name or a
    first character ``{`` means Mooncake, otherwise the CSV header decides.

Lengths (``LengthSpec``)
    fixed: round(mean); uniform: an integer in [min, max]; normal: mean and std, rounded and
    clipped to [min, max]; lognormal: mean and std *of the count itself* (converted to the
    underlying normal's mu and sigma), rounded and clipped. Every count is an int >= 1. max_tokens
    comes from ``output_tokens`` when set, else ``load.max_tokens`` (jsonl: a line's own
    ``max_tokens`` first; trace: the row's output length, a recorded 0 sent as 1).

Sizing in tokens
    Without a tokenizer, N tokens are ``round(N * words_per_token)`` words (the spec's stated
    ratio, which the report repeats). With ``load.requests.tokenizer`` (a local Hugging Face
    tokenizer directory, loaded offline with ``tokenizers`` or ``transformers``), the parent
    measures the tokenizer's words per token on the synthetic vocabulary and counts each JSONL
    prompt, so generator processes never load a tokenizer.

Uniqueness
    Unless ``repeat_prompts``, every prompt starts with ``#<worker>-<n>`` (n counts the worker's
    requests), so no two prompts of a run are the same and no two share a first token block:
    prefix caching cannot flatter TTFT. Draws come from a numpy generator seeded with
    ``(seed, worker)``: the same seed and worker give the same requests, workers differ.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.errors import SpecError

if TYPE_CHECKING:
    from tasks.spec import LoadSpec
    from tasks.spec.load import LengthSpec

CONFIG_VERSION = 1
MAX_REQUEST_FILE_BYTES = 256 * 1024 * 1024
MAX_REQUEST_ROWS = 2_000_000
MAX_INPUT_TOKENS = 1_000_000
# Offsets into the prebuilt text a synthetic body may start at: the bodies vary, at no cost.
_BODY_WINDOW_WORDS = 4096
_DRAW_BATCH = 4096
_CALIBRATION_WORDS = 4000

# Common short English words: one token each in the usual BPE vocabularies, so words per token of
# this text is close to the stated ratio's meaning.
_VOCABULARY_TEXT = """
the of and to in is was for that on with as by at from his her they this are had not but be have
which one you were all their we an has there been if more when will would who so no out up into
do can time two may only over new some could these see other than then now first any like very
after where just most made also did many before must through back years much way well should
because each people down three work good old long great little world own still day place life
under never same another while last might house part found again being off year small between
both end few land light night sea city river water tree stone wind rain snow sun moon star
field road hill wall door window table chair book page word line letter paper story song voice
music color green blue red white black gold silver iron glass wood bread salt milk tea fruit
apple seed leaf root branch flower grass garden farm market bridge tower ship boat train car
horse bird fish dog cat sheep cow bear wolf fox deer lake island shore coast valley mountain
forest desert cloud storm thunder morning evening summer winter spring autumn north south east
west left right near far high low deep wide warm cold dry wet soft hard quick slow bright dark
early late open close begin start stop turn move walk run carry hold bring send build write read
speak listen watch learn teach count measure weigh follow lead help plan rest sleep wake
"""
_VOCABULARY = tuple(dict.fromkeys(_VOCABULARY_TEXT.split()))

_TRACE_HEADERS = {
    "azure": ("timestamp", "contexttokens", "generatedtokens"),
    "csv": ("timestamp", "input_tokens", "output_tokens"),
}
_COLUMN_NAMES = {"timestamp": "timestamp", "contexttokens": "ContextTokens", "generatedtokens": "GeneratedTokens",
                 "input_tokens": "input_tokens", "output_tokens": "output_tokens"}
_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
_JSONL_FIELDS = ("prompt", "max_tokens")


# -- the parent: validate and resolve ----------------------------------------------------------
def request_config(load: LoadSpec, served_name: str) -> dict[str, Any]:
    """Validate ``load.requests`` (reading its file in full) and return the generator's config.

    Raises ``SpecError`` naming the field, or the file with its line/row and field/column."""
    req = load.requests
    if req.source != "synthetic":
        for name in ("input_tokens", "output_tokens"):
            if getattr(req, name) is not None and not (req.source == "jsonl" and name == "output_tokens"):
                what = "the trace gives each request's lengths" if req.source == "trace" else \
                    "each prompt is sent as written"
                raise SpecError(f"load.requests.{name}: applies to source synthetic only ({what}); "
                                f"remove it or use source: synthetic")
    for name in ("input_tokens", "output_tokens"):
        if getattr(req, name) is not None:
            _check_length(f"load.requests.{name}", getattr(req, name))

    counter = _load_tokenizer(req.tokenizer) if req.tokenizer else None
    vocab_wpt = _calibrate(counter) if counter else float(req.words_per_token)

    cfg: dict[str, Any] = {
        "version": CONFIG_VERSION,
        "source": req.source,
        "model": served_name,
        "prompt": load.prompt,
        "max_tokens": int(load.max_tokens),
        "input_tokens": req.input_tokens.model_dump() if req.input_tokens else None,
        "output_tokens": req.output_tokens.model_dump() if req.output_tokens else None,
        "words_per_token": float(req.words_per_token),
        "vocab_words_per_token": vocab_wpt,
        "tokenizer": str(Path(req.tokenizer).expanduser().resolve()) if req.tokenizer else None,
        "repeat_prompts": bool(req.repeat_prompts),
        "file": None,
    }
    if req.source == "synthetic":
        cfg["prompt_tokens"] = (counter([load.prompt])[0] if counter
                                else _words_to_tokens(len(load.prompt.split()), req.words_per_token))
    else:
        path = Path(req.path).expanduser().resolve()  # type: ignore[arg-type]
        blob = _read_capped(path, "load.requests.path")
        if req.source == "jsonl":
            prompts, _ = _parse_prompts(blob, _where(path))
            stats = {"rows": len(prompts)}
            if counter:
                counts = counter(prompts)
                cfg["prompt_token_counts"] = [int(c) for c in counts]
                stats["input_mean"] = round(float(np.mean(counts)), 1)
        else:
            fmt, _, inputs, outputs = _parse_trace(blob, path, _where(path))
            stats = {"rows": len(inputs), "format": fmt,
                     "input_mean": round(float(np.mean(inputs)), 1), "input_max": int(np.max(inputs)),
                     "output_mean": round(float(np.mean(outputs)), 1), "output_max": int(np.max(outputs))}
        cfg["file"] = {"path": str(path), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), **stats}
    return cfg


def describe(cfg: dict[str, Any]) -> str:
    """One line for the report: the source, the length distributions and the sizing ratio."""
    sizing = (f"sized by the tokenizer in {cfg['tokenizer']} "
              f"({cfg['vocab_words_per_token']:.2f} words/token on the synthetic text)"
              if cfg.get("tokenizer") else f"by {cfg['words_per_token']:g} words/token")
    output = _describe_length(cfg["output_tokens"]) if cfg["output_tokens"] else f"fixed {cfg['max_tokens']}"
    unique = "repeated verbatim" if cfg["repeat_prompts"] else "unique (request number first)"
    f = cfg.get("file") or {}
    if cfg["source"] == "synthetic":
        if cfg["input_tokens"]:
            inp = f"input {_describe_length(cfg['input_tokens'])} tokens {sizing}"
        else:
            inp = f"input load.prompt (about {cfg['prompt_tokens']} tokens {sizing})"
        return f"synthetic prompts, {inp}, output {output}, {unique}"
    name = Path(f["path"]).name
    if cfg["source"] == "jsonl":
        return (f"JSONL prompts from {name} ({f['rows']} lines, cycled in order), output per line's "
                f"max_tokens else {output}, {unique}")
    label = {"azure": "Azure LLM inference trace", "mooncake": "Mooncake trace", "csv": "trace CSV"}[f["format"]]
    return (f"{label} {name} ({f['rows']} rows, cycled in order; input mean {f['input_mean']:g} max "
            f"{f['input_max']} tokens, output mean {f['output_mean']:g} max {f['output_max']}), prompts "
            f"synthesised {sizing}, {unique}")


# -- the generator process ---------------------------------------------------------------------
class RequestSource:
    """Yields ``(prompt, max_tokens, input_tokens_estimate)`` per request of one worker.

    >>> src = RequestSource.from_config(cfg, seed=7, worker=0)   # doctest: +SKIP
    >>> src.next()                                                # doctest: +SKIP
    ('#0-0 Explain in three sentences why the tide rises and falls.', 128, 13)
    """

    def __init__(self, cfg: dict[str, Any], seeds: np.random.SeedSequence, worker: int,
                 rows: dict[str, Any] | None = None):
        self._cfg = cfg
        self._worker = int(worker)
        self._n = 0
        self._repeat = bool(cfg["repeat_prompts"])
        streams = seeds.spawn(3)  # independent: drawing one never shifts another
        self._input = _Draws(cfg["input_tokens"], np.random.default_rng(streams[0])) if cfg["input_tokens"] else None
        self._output = _Draws(cfg["output_tokens"] or {"dist": "fixed", "mean": cfg["max_tokens"], "std": 0,
                                                        "min": 1, "max": max(1, cfg["max_tokens"])},
                              np.random.default_rng(streams[1]))
        self._offsets = np.random.default_rng(streams[2])
        self._offset_buf: list[int] = []
        self._wpt = float(cfg["vocab_words_per_token"])
        self._rows = rows or {}
        #: a trace's timestamps in seconds from its first row (None for other sources)
        self.trace_offsets_s: np.ndarray | None = self._rows.get("offsets_s")
        self._text = ""
        self._starts = np.zeros(1, dtype=np.int64)
        max_tokens_needed = 0
        if cfg["source"] == "synthetic" and cfg["input_tokens"]:
            spec = cfg["input_tokens"]
            max_tokens_needed = int(spec["max"]) if spec["dist"] != "fixed" else _fixed(spec)
        elif cfg["source"] == "trace":
            max_tokens_needed = int(np.max(self._rows["inputs"]))
        if max_tokens_needed:
            self._text, starts = _base_text(self._words(max_tokens_needed) + _BODY_WINDOW_WORDS + 1)
            self._starts = starts

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, seed: int, worker: int = 0) -> RequestSource:
        """Build a worker's source from ``request_config``'s dict (reads its file once)."""
        if cfg.get("version") != CONFIG_VERSION:
            raise SpecError(f"request config version {cfg.get('version')!r}, this generator reads "
                            f"{CONFIG_VERSION}: the parent and the generator run different tidegate versions")
        seeds = np.random.SeedSequence([int(seed), int(worker)])
        rows: dict[str, Any] | None = None
        f = cfg.get("file")
        if f:
            path = Path(f["path"])
            blob = _read_capped(path, "load.requests.path")
            if hashlib.sha256(blob).hexdigest() != f["sha256"]:
                raise SpecError(f"{_where(path)}: changed since the run was planned (sha256 "
                                f"{f['sha256'][:12]}..., now {hashlib.sha256(blob).hexdigest()[:12]}...)")
            if cfg["source"] == "jsonl":
                prompts, max_tokens = _parse_prompts(blob, _where(path))
                counts = cfg.get("prompt_token_counts") or [
                    _words_to_tokens(len(p.split()), cfg["words_per_token"]) for p in prompts]
                rows = {"prompts": prompts, "max_tokens": max_tokens, "counts": counts}
            else:
                _, offsets, inputs, outputs = _parse_trace(blob, path, _where(path))
                rows = {"offsets_s": offsets, "inputs": [max(1, int(x)) for x in inputs],
                        "outputs": [max(1, int(x)) for x in outputs]}
        return cls(cfg, seeds, worker, rows)

    def next(self) -> tuple[str, int, int]:
        """The next request: (prompt text, max_tokens, input tokens estimate)."""
        n = self._n
        self._n += 1
        prefix = "" if self._repeat else f"#{self._worker}-{n} "
        source = self._cfg["source"]
        if source == "trace":
            i = n % len(self._rows["inputs"])
            tokens = self._rows["inputs"][i]
            return prefix + self._body(tokens, bool(prefix)), self._rows["outputs"][i], tokens
        if source == "jsonl":
            i = n % len(self._rows["prompts"])
            own = self._rows["max_tokens"][i]
            max_tokens = own if own else self._output.next()
            return prefix + self._rows["prompts"][i], max_tokens, self._rows["counts"][i] + (1 if prefix else 0)
        if self._input is None:
            return prefix + self._cfg["prompt"], self._output.next(), self._cfg["prompt_tokens"] + (1 if prefix else 0)
        tokens = self._input.next()
        return prefix + self._body(tokens, bool(prefix)), self._output.next(), tokens

    def _words(self, tokens: int) -> int:
        return max(1, round(tokens * self._wpt))

    def _body(self, tokens: int, prefixed: bool) -> str:
        # The request number stands for one of the words, so the whole prompt is about `tokens`.
        words = max(1, self._words(tokens) - (1 if prefixed else 0))
        if self._repeat:
            start = 0
        else:
            if not self._offset_buf:
                self._offset_buf = self._offsets.integers(0, _BODY_WINDOW_WORDS, _DRAW_BATCH).tolist()
            start = self._offset_buf.pop()
        return self._text[self._starts[start]:self._starts[start + words] - 1]


class _Draws:
    """Integer draws of one ``LengthSpec`` (as a dict), made in batches: one numpy call per
    ``_DRAW_BATCH`` requests keeps ``next()`` cheap and the sequence a function of the seed."""

    def __init__(self, spec: dict[str, Any], rng: np.random.Generator):
        self.spec = spec
        self.rng = rng
        self.buf: list[int] = []

    def next(self) -> int:
        if not self.buf:
            self.buf = draw_lengths(self.spec, self.rng, _DRAW_BATCH).tolist()
            self.buf.reverse()
        return self.buf.pop()


def draw_lengths(spec: dict[str, Any], rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` token counts of a ``LengthSpec`` dict (module docstring), ints >= 1."""
    lo, hi = max(1, int(spec["min"])), max(1, int(spec["max"]))
    dist, mean, std = spec["dist"], float(spec["mean"]), float(spec["std"])
    if dist == "fixed":
        return np.full(size, _fixed(spec), dtype=np.int64)
    if dist == "uniform":
        return rng.integers(lo, hi + 1, size, dtype=np.int64)
    if dist == "normal":
        values = rng.normal(mean, std, size)
    else:
        sigma2 = math.log1p((std / mean) ** 2)
        values = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size)
    return np.clip(np.rint(values), lo, hi).astype(np.int64)


# -- helpers -----------------------------------------------------------------------------------
def _fixed(spec: dict[str, Any]) -> int:
    return int(min(max(round(float(spec["mean"])), int(spec["min"]), 1), int(spec["max"])))


def _check_length(field: str, spec: LengthSpec) -> None:
    if spec.dist != "uniform" and not spec.min <= spec.mean <= spec.max:
        raise SpecError(f"{field}.mean: {spec.mean:g} is outside [min {spec.min}, max {spec.max}] "
                        f"(a {spec.dist} distribution draws around its mean and clips to those bounds)")


def _describe_length(spec: dict[str, Any]) -> str:
    if spec["dist"] == "fixed":
        return f"fixed {_fixed(spec)}"
    if spec["dist"] == "uniform":
        return f"uniform({spec['min']}..{spec['max']})"
    return f"{spec['dist']}(mean {spec['mean']:g}, std {spec['std']:g}, clipped to {spec['min']}..{spec['max']})"


def _words_to_tokens(words: int, words_per_token: float) -> int:
    return max(1, round(words / float(words_per_token)))


def _base_text(words: int) -> tuple[str, np.ndarray]:
    """A fixed text of ``words`` vocabulary words (the same in every process: seed 0) and the
    character offset where each word starts (one past the end for the last)."""
    rng = np.random.default_rng(0)
    vocab = np.array(_VOCABULARY)
    chosen = vocab[rng.integers(0, len(vocab), words)]
    lengths = np.char.str_len(chosen).astype(np.int64) + 1
    starts = np.zeros(words + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return " ".join(chosen.tolist()) + " ", starts


def _where(path: Path) -> str:
    return f"request file {path} (load.requests.path)"


def _read_capped(path: Path, field: str) -> bytes:
    where = f"request file {path} ({field})"
    try:
        size = os.stat(path).st_size
        if size > MAX_REQUEST_FILE_BYTES:
            raise SpecError(f"{where}: file too large ({size} bytes, at most {MAX_REQUEST_FILE_BYTES}); "
                            f"cut it to the part the run replays")
        with open(path, "rb") as fh:
            blob = fh.read(MAX_REQUEST_FILE_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(blob) > MAX_REQUEST_FILE_BYTES:
        raise SpecError(f"{where}: file too large (more than {MAX_REQUEST_FILE_BYTES} bytes)")
    if not blob.strip():
        raise SpecError(f"{where}: file is empty")
    return blob


def _decode(blob: bytes, where: str) -> str:
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 text (byte {exc.start})") from None


def _json_lines(text: str, where: str) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{where}: line {line_no}: not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(doc, dict):
            raise SpecError(f"{where}: line {line_no}: expected a JSON object, got {type(doc).__name__}")
        out.append((line_no, doc))
        if len(out) > MAX_REQUEST_ROWS:
            raise SpecError(f"{where}: more than {MAX_REQUEST_ROWS} lines")
    if not out:
        raise SpecError(f"{where}: no JSON lines (only blank lines)")
    return out


def _count(value: Any, where: str, at: str, *, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(f"{where}: {at}: must be a non-negative integer (got {_show(value)})")
    try:
        number = int(value) if not isinstance(value, float) else None
    except ValueError:
        number = None
    if number is None and isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None:
        raise SpecError(f"{where}: {at}: must be a non-negative integer (got {_show(value)})")
    if number < 0 or (number == 0 and not allow_zero):
        raise SpecError(f"{where}: {at}: must be {'>= 0' if allow_zero else '>= 1'} (got {number})")
    if number > MAX_INPUT_TOKENS:
        raise SpecError(f"{where}: {at}: {number} tokens is more than {MAX_INPUT_TOKENS}")
    return number


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_prompts(blob: bytes, where: str) -> tuple[list[str], list[int]]:
    """A prompts JSONL: (prompts, per-line max_tokens or 0)."""
    prompts: list[str] = []
    max_tokens: list[int] = []
    for line_no, doc in _json_lines(_decode(blob, where), where):
        unknown = sorted(set(doc) - set(_JSONL_FIELDS))
        if unknown:
            hint = (" (a Mooncake trace? use source: trace)" if "input_length" in doc else "")
            raise SpecError(f"{where}: line {line_no}, field {unknown[0]}: unknown field; a line has "
                            f"prompt and optionally max_tokens{hint}")
        if "prompt" not in doc:
            raise SpecError(f"{where}: line {line_no}, field prompt: missing")
        prompt = doc["prompt"]
        if not isinstance(prompt, str):
            raise SpecError(f"{where}: line {line_no}, field prompt: must be a string (got {_show(prompt)})")
        if not prompt.strip():
            raise SpecError(f"{where}: line {line_no}, field prompt: empty")
        own = doc.get("max_tokens")
        prompts.append(prompt)
        max_tokens.append(0 if own is None else
                          _count(own, where, f"line {line_no}, field max_tokens", allow_zero=False))
    return prompts, max_tokens


def _parse_trace(blob: bytes, path: Path, where: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """A trace file: (format, timestamps in s from the first row, input tokens, output tokens)."""
    text = _decode(blob, where)
    if path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        return ("mooncake", *_parse_mooncake(text, where))
    return _parse_trace_csv(text, where)


def _parse_mooncake(text: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    times: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    for line_no, doc in _json_lines(text, where):
        for name in _MOONCAKE_FIELDS:
            if name not in doc:
                raise SpecError(f"{where}: line {line_no}, field {name}: missing (a Mooncake line has "
                                f"timestamp in ms, input_length, output_length)")
        stamp = doc["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not math.isfinite(stamp) or stamp < 0:
            raise SpecError(f"{where}: line {line_no}, field timestamp: must be a number of "
                            f"milliseconds >= 0 (got {_show(stamp)})")
        if times and stamp / 1000.0 < times[-1]:
            raise SpecError(f"{where}: line {line_no}, field timestamp: {stamp:g} is before the previous "
                            f"line's {times[-1] * 1000:g} (a trace's timestamps must not decrease)")
        times.append(stamp / 1000.0)
        inputs.append(_count(doc["input_length"], where, f"line {line_no}, field input_length"))
        outputs.append(_count(doc["output_length"], where, f"line {line_no}, field output_length"))
    t = np.asarray(times)
    return t - t[0], np.asarray(inputs, dtype=np.int64), np.asarray(outputs, dtype=np.int64)


def _parse_trace_csv(text: str, where: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    header_row = 0
    times: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    fmt = ""
    idx: tuple[int, int, int] = (0, 0, 0)
    names: tuple[str, str, str] = ("", "", "")
    last_stamp = ""
    stamp_kind = ""
    try:
        for fields in reader:
            row = reader.line_num
            if not fields or not "".join(fields).strip():
                continue
            if header is None:
                header, header_row = fields, row
                lowered = [h.strip().lower() for h in fields]
                # the format whose columns the header has most of; name the first it lacks
                fmt = max(_TRACE_HEADERS, key=lambda k: sum(c in lowered for c in _TRACE_HEADERS[k]))
                if not any(c in lowered for c in _TRACE_HEADERS[fmt]):
                    raise SpecError(f"{where}: row {row}: header must be TIMESTAMP,ContextTokens,GeneratedTokens "
                                    f"(Azure) or timestamp,input_tokens,output_tokens (got "
                                    f"{', '.join(_show(h, 24) for h in fields[:6])})")
                for col in _TRACE_HEADERS[fmt]:
                    if col not in lowered:
                        raise SpecError(f"{where}: row {row}, column {_COLUMN_NAMES[col]}: missing from the "
                                        f"header (expected {','.join(_COLUMN_NAMES[c] for c in _TRACE_HEADERS[fmt])})")
                idx = tuple(lowered.index(c) for c in _TRACE_HEADERS[fmt])  # type: ignore[assignment]
                names = tuple(fields[i].strip() for i in idx)  # type: ignore[assignment]
                continue
            if len(fields) != len(header):
                raise SpecError(f"{where}: row {row}: {len(fields)} fields, the header has {len(header)}")
            raw = fields[idx[0]].strip()
            try:
                kind, stamp = _parse_time(raw)
            except ValueError as exc:
                raise SpecError(f"{where}: row {row}, column {names[0]}: {exc}") from None
            if stamp_kind and kind != stamp_kind:
                raise SpecError(f"{where}: row {row}, column {names[0]}: a {kind} after rows of {stamp_kind} "
                                f"({_show(raw)}); use one form throughout")
            if times and stamp < times[-1]:
                raise SpecError(f"{where}: row {row}, column {names[0]}: {_show(raw)} is before the previous "
                                f"row's {_show(last_stamp)} (a trace's timestamps must not decrease)")
            stamp_kind, last_stamp = kind, raw
            times.append(stamp)
            inputs.append(_count(fields[idx[1]].strip(), where, f"row {row}, column {names[1]}"))
            outputs.append(_count(fields[idx[2]].strip(), where, f"row {row}, column {names[2]}"))
            if len(times) > MAX_REQUEST_ROWS:
                raise SpecError(f"{where}: more than {MAX_REQUEST_ROWS} data rows")
    except csv.Error as exc:
        raise SpecError(f"{where}: row {reader.line_num}: not valid CSV ({exc})") from None
    if not times:
        raise SpecError(f"{where}: row {header_row}: a header and no data rows")
    t = np.asarray(times)
    return fmt, t - t[0], np.asarray(inputs, dtype=np.int64), np.asarray(outputs, dtype=np.int64)


def _parse_time(text: str) -> tuple[str, float]:
    """A trace timestamp: seconds (a number), or an ISO date-time (Azure's ``2023-11-16
    18:15:46.6805900`` has 7 fraction digits, cut to microseconds)."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a finite number of seconds >= 0 ({_show(text)})")
        return "number of seconds", value
    head, dot, frac = text.partition(".")
    if dot:
        digits = len(frac) - len(frac.lstrip("0123456789"))
        frac = frac[:min(digits, 6)] + frac[digits:]
    try:
        stamp = dt.datetime.fromisoformat(head + dot + frac)
    except ValueError:
        raise ValueError(f"not a date-time or number of seconds ({_show(text)})") from None
    if stamp.tzinfo is None:
        return "date-time", (stamp - dt.datetime(1970, 1, 1)).total_seconds()
    return "date-time", stamp.timestamp()


# -- tokenizer (parent only) -------------------------------------------------------------------
def _load_tokenizer(directory: str) -> Any:
    """A token counter ``list[str] -> list[int]`` from a local tokenizer directory, offline."""
    field = "load.requests.tokenizer"
    where = Path(directory).expanduser().resolve()
    if not where.is_dir():
        raise SpecError(f"{field}: {where} is not a directory (a local Hugging Face tokenizer, never downloaded)")
    try:
        import tokenizers  # optional and heavy: only the parent loads it
    except ImportError:
        tokenizers = None
    if tokenizers is not None and (where / "tokenizer.json").is_file():
        try:
            tok = tokenizers.Tokenizer.from_file(str(where / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - any failure of a user file is a spec problem
            raise SpecError(f"{field}: {where / 'tokenizer.json'} does not load: {exc}") from None
        return lambda texts: [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    try:
        import transformers
    except ImportError:
        if tokenizers is not None:
            raise SpecError(f"{field}: {where} has no tokenizer.json (the tokenizers package reads only "
                            f"that; transformers is not installed)") from None
        raise SpecError(f"{field}: neither the tokenizers nor the transformers package is installed in "
                        f"this environment; install one (pip install tokenizers) or unset the tokenizer "
                        f"to size prompts by load.requests.words_per_token") from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{field}: {where} does not load offline: {exc}") from None
    return lambda texts: [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


def _calibrate(counter: Any) -> float:
    """Words per token of the synthetic vocabulary text under a tokenizer."""
    text, _ = _base_text(_CALIBRATION_WORDS)
    tokens = counter([text.strip()])[0]
    if tokens <= 0:
        raise SpecError("load.requests.tokenizer: the tokenizer produced no tokens for plain English text")
    return _CALIBRATION_WORDS / tokens
