"""Typed, validated view of params.yaml: the single source of truth for every knob.

Everything else imports from here, never the other way round. Validation happens before any heavy
import, so a typo in params.yaml costs milliseconds, not a TensorFlow start-up.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import random as _random
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from char_rnn.errors import PipelineError

BUILTIN_CORPORA = ("seed", "kolaw", "kobill", "kolaw+kobill")


class ParamsError(PipelineError):
    """A params file that cannot be used; the message names every bad key and what is allowed."""


MAX_INT = 2**31 - 1  # NumPy's seeds and TensorFlow's int32 tensors take no more: refused here, not mid-run


class _Section(BaseModel):
    # Unknown keys are typos more often than not: reject them instead of silently ignoring them.
    # `.inf` and `.nan` pass every bound (or no comparison at all) yet mean nothing for any knob.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CorpusParams(_Section):
    source: str = Field(
        description="'seed' (the blog's sentence), 'kolaw', 'kobill', 'kolaw+kobill' "
        "(texts shipped with konlpy), a path to a UTF-8 text file, or a folder: its *.txt documents in name order",
    )

    @field_validator("source")
    @classmethod
    def _known_or_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must be one of {', '.join(BUILTIN_CORPORA)}, a file or a folder")
        return value


class WindowParams(_Section):
    length: int = Field(ge=1, le=10_000, description="characters per training window")
    stride: int = Field(ge=1, le=MAX_INT, description="offset between consecutive window starts")


class SplitParams(_Section):
    """Contiguous slices in the text's order: train, tune, validation, test (the newest text last)."""

    test_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="the corpus's tail: the reported figures and the gate's comparison; never used to choose anything",
    )
    val_fraction: float = Field(
        ge=0.0, lt=1.0, description="slice just before the test text: early stopping and choosing configs"
    )
    tune_fraction: float = Field(
        ge=0.0,
        lt=1.0,
        description="slice just before the validation text, held out from the first fit to fit the hybrid's weights",
    )

    @model_validator(mode="after")
    def _room_for_training(self) -> SplitParams:
        if self.test_fraction + self.val_fraction + self.tune_fraction >= 1.0:
            raise ValueError("test_fraction + val_fraction + tune_fraction must leave text to train on (sum < 1)")
        return self


class UnitKind(str, Enum):
    closed = "closed"
    open = "open"


class VocabParams(_Section):
    """What the models read and predict (`char_rnn.units`); built from the training text alone."""

    units: UnitKind = Field(
        description="closed: one unit per character of the training text (the blog's); open: any text, rare and"
        " unseen characters spelled in Hangul jamo or UTF-8 bytes"
    )
    min_count: int = Field(
        default=3, ge=1, le=MAX_INT, description="open: a training character this frequent is a unit of its own"
    )


class Cell(str, Enum):
    simple_rnn = "simple_rnn"
    lstm = "lstm"
    gru = "gru"


class InputEncoding(str, Enum):
    one_hot = "one_hot"
    embedding = "embedding"


class ModelParams(_Section):
    cell: Cell
    units: int = Field(ge=1, le=8192)
    layers: int = Field(ge=1, le=8)
    dropout: float = Field(ge=0.0, lt=1.0, description="dropout on each recurrent layer's output")
    recurrent_dropout: float = Field(
        ge=0.0, lt=1.0, description="dropout on the recurrent state (about 40 % slower on CPU)"
    )
    input: InputEncoding
    embedding_dim: int = Field(ge=1, le=4096, description="used only when input is 'embedding'")
    ensemble: int = Field(
        ge=1,
        le=16,
        description="RNNs of this shape, trained with seeds train.seed, "
        "train.seed + 1, ...; the model averages their probabilities",
    )


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class Init(str, Enum):
    scratch = "scratch"
    champion = "champion"


class WarmRates(str, Enum):
    champion = "champion"
    grid = "grid"


class TrainParams(_Section):
    epochs: int = Field(ge=1, le=MAX_INT)
    batch_size: int = Field(ge=1, le=MAX_INT)
    learning_rate: float = Field(gt=0.0, le=1.0)
    lr_schedule: Schedule = Field(description="constant, or cosine decay to zero over all epochs")
    clipnorm: float = Field(ge=0.0, description="gradient norm clip; 0 turns it off")
    early_stopping_patience: int = Field(
        ge=0,
        le=MAX_INT,
        description="epochs without a better val_loss before stopping and restoring the best weights; 0 = off",
    )
    seed: int = Field(ge=0, le=MAX_INT - 16, description="member i of an ensemble is seeded seed + i")
    init: Init = Field(
        default=Init.scratch,
        description="scratch (seeded initial weights), or champion: continue the registered champion's weights"
        " (char_rnn.warm_start); without a champion, from scratch",
    )


class BaselineParams(_Section):
    order: int = Field(ge=1, le=10, description="n of the Kneser-Ney character n-gram")


class TuneParams(_Section):
    """What the tune stage fits on the tuning slice, with the first fit's RNNs, which have not read it."""

    cache_window: int = Field(
        ge=0,
        le=100_000,
        description="the hybrid's third part: a cache of the last this many "
        "characters, weighted with the RNN and the n-gram on the tuning slice; 0 = none",
    )
    match_min: int = Field(
        default=0,
        ge=0,
        le=64,
        description="the match model over the hybrid's mixture: after the last this many units occurred"
        " before, predict the unit that followed them there, as far as such copies were right (char_rnn.match);"
        " 0 = none",
    )
    dynamic_rates: list[float] = Field(
        description="SGD learning rates for dynamic evaluation (the RNN learns "
        "from each scored segment before the next), tried on the tuning slice; [] = static scoring only"
    )
    dynamic_segment: int = Field(ge=1, le=10_000, description="characters scored per dynamic-evaluation step")
    dynamic_context: int = Field(ge=1, le=100_000, description="characters before each segment read by its step")
    mixture_shares: list[float] = Field(
        default=[],
        description="shares of the fitted weights the hybrid returns to after each scored unit (fixed share:"
        " its weights follow the text), tried on the tuning slice beside fixed weights; [] = fixed weights only",
    )
    warm_rates: WarmRates = Field(
        default=WarmRates.champion,
        description="after a warm start (train.init: champion), champion: try only the rate the champion chose"
        " (and static scoring), grid: every rate of dynamic_rates",
    )

    @field_validator("mixture_shares")
    @classmethod
    def _proper_shares(cls, shares: list[float]) -> list[float]:
        """1 is the fixed weights, always a candidate; 0 would let a part that missed once never recover."""
        if any(not 0 < share < 1 for share in shares):
            raise ValueError("every share must be > 0 and < 1 (fixed weights, share 1, are always tried as well)")
        return shares

    @field_validator("dynamic_rates")
    @classmethod
    def _positive_rates(cls, rates: list[float]) -> list[float]:
        """0 would only repeat static scoring, which is always among the candidates anyway."""
        if any(not 0 < rate <= 10 for rate in rates):
            raise ValueError("every rate must be > 0 and <= 10 (static scoring is always tried as well)")
        return rates


class RefitParams(_Section):
    enabled: bool = Field(
        description="after the tune stage, train fresh RNNs on training + tuning text for the "
        "epochs the first fit kept, so the scored RNN reads the text the scored n-gram counts"
    )


class ValidationParams(_Section):
    max_control_share: float = Field(
        ge=0.0, le=1.0, description="largest allowed share of control characters (tab and newline excepted)"
    )


class DriftParams(_Section):
    """New documents against the champion's training text, checked before training (`char_rnn.drift`).
    The defaults pass every kolaw+kobill bill arriving after the constitution and stop English prose
    and random CJK text (measured: docs/pipeline.md)."""

    max_unseen_share: float = Field(
        default=0.3, ge=0.0, lt=1.0, description="share of a new document's characters the champion never trained on"
    )
    max_script_shift: float = Field(
        default=0.5, ge=0.0, le=1.0, description="largest change of a script's share (Hangul, Latin, digits, ...)"
    )
    max_divergence: float = Field(
        default=1.5, gt=0.0, description="KL divergence (nats) of the new text's characters from the champion's"
    )
    max_similarity: float = Field(
        default=0.98, gt=0.0, le=1.0, description="share of a new document's 8-grams another document has"
    )
    min_document_chars: int = Field(default=1, ge=0, description="non-space characters a new document needs")


class EvaluateParams(_Section):
    prompt: str = Field(min_length=1, description="fixed prompt for the generated sample")
    sample_length: int = Field(ge=1, le=10_000)
    temperature: float = Field(ge=0.0, description="0 picks the most likely character (greedy)")
    context: int = Field(
        ge=1, le=MAX_INT, description="characters of preceding text every held-out character is scored with"
    )


class Metric(str, Enum):
    """The figures the gate can rank versions by, each re-scored on the same text for both versions."""

    bits_per_char = "bits_per_char"
    hybrid_bits_per_char = "hybrid_bits_per_char"
    accuracy = "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self is Metric.accuracy


class RegistryParams(_Section):
    model_name: str | None = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="registered model; null: char-rnn-<corpus>, so each corpus has its own champion",
    )
    metric: Metric = Field(
        description="what is served (the hybrid or the RNN alone) and ranks it against the champion:"
        " bits_per_char, hybrid_bits_per_char (lower wins) or accuracy (higher wins)"
    )
    min_improvement: float = Field(
        ge=0.0, lt=1.0, description="relative gain over the champion, re-scored on the same text, needed to promote"
    )
    must_beat_baseline: bool = Field(
        default=False,
        description="never crown a version that is not better than the n-gram on the same test text",
    )
    # What one request to a served version may ask for, so that no request holds the server for minutes.
    max_length: int = Field(default=2000, ge=1, le=10_000, description="longest continuation a request may ask for")
    max_prompt: int = Field(default=10_000, ge=1, le=1_000_000, description="longest prompt, in characters")
    max_rows: int = Field(default=64, ge=1, le=10_000, description="most prompts in one request")


def default_model_name(source: str) -> str:
    """`char-rnn-<corpus>`: a built-in corpus's name, or a file's name without its suffix."""
    stem = source if source in BUILTIN_CORPORA else Path(source).stem
    return "char-rnn-" + (re.sub(r"[^A-Za-z0-9_.]+", "-", stem).strip("-.") or "corpus")


SWEEPABLE = ("model", "train")


def _sweepable(key: str) -> str:
    if key.partition(".")[0] not in SWEEPABLE or not key.partition(".")[2]:
        raise ValueError("only model.* and train.* keys can vary; data, evaluation and registry are shared")
    return key


# Checked per key and per list, so that an error's location names the grid key (sweep.grid.<key>).
SweepKey = Annotated[str, AfterValidator(_sweepable)]
Values = Annotated[list[Any], Field(min_length=1)]


class SweepParams(_Section):
    """A grid (or a random sample of it) of dotted overrides, and how many trials train at once.

    Only model.* and train.* vary: the data, split, evaluation and registry metric are shared, so
    every trial of a sweep is scored on the same text with the same metric.
    """

    max_parallel: int = Field(default=2, ge=1, le=64, description="trials training at once")
    grid: dict[SweepKey, Values] = Field(min_length=1, description="dotted key -> values; cartesian product")
    random: int | None = Field(default=None, ge=1, le=MAX_INT, description="sample this many configs of the grid")
    seed: int = Field(default=0, ge=0, le=MAX_INT, description="seed of the random sample")

    def configs(self) -> list[dict[str, Any]]:
        """The grid's combinations in the spec's key order, or a seeded sample of them (order kept)."""
        keys = list(self.grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]
        if self.random is None or self.random >= len(combos):
            return combos
        picked = sorted(_random.Random(self.seed).sample(range(len(combos)), self.random))
        return [combos[i] for i in picked]


class Params(_Section):
    corpus: CorpusParams
    vocab: VocabParams
    window: WindowParams
    split: SplitParams
    model: ModelParams
    train: TrainParams
    validation: ValidationParams
    drift: DriftParams = DriftParams()
    baseline: BaselineParams
    tune: TuneParams
    refit: RefitParams
    evaluate: EvaluateParams
    registry: RegistryParams
    sweep: SweepParams

    @model_validator(mode="before")
    @classmethod
    def _name_the_model(cls, raw: Any) -> Any:
        """`registry.model_name: null` names the registered model after the corpus: `char-rnn-kolaw`, or a
        file's name without its suffix, so that each corpus has its own champion."""
        registry, corpus = (raw.get(key) if isinstance(raw, dict) else None for key in ("registry", "corpus"))
        if not (isinstance(registry, dict) and isinstance(corpus, dict) and registry.get("model_name") is None):
            return raw
        return {**raw, "registry": {**registry, "model_name": default_model_name(str(corpus.get("source", "")))}}

    @model_validator(mode="after")
    def _needs_held_out_text(self) -> Params:
        """Options that read held-out text are refused when the split provides none."""
        if self.registry.must_beat_baseline and not self.split.test_fraction:
            raise ValueError("registry.must_beat_baseline needs split.test_fraction > 0 (it compares on the test text)")
        if self.train.early_stopping_patience and not self.split.val_fraction:
            raise ValueError("train.early_stopping_patience needs split.val_fraction > 0 (it watches val_loss)")
        if self.registry.metric is Metric.hybrid_bits_per_char and not (
            self.split.val_fraction and self.split.tune_fraction
        ):
            raise ValueError(
                "registry.metric hybrid_bits_per_char needs split.val_fraction and split.tune_fraction > 0"
            )
        if self.registry.metric is Metric.hybrid_bits_per_char and not self.refit.enabled:
            raise ValueError(
                "registry.metric hybrid_bits_per_char needs refit.enabled: true (else the scored n-gram"
                " has read the tuning slice and the RNN has not, and the weights were fitted with neither)"
            )
        if self.tune.dynamic_rates and not (self.split.val_fraction and self.split.tune_fraction):
            raise ValueError(
                "tune.dynamic_rates needs split.val_fraction and split.tune_fraction > 0 (the rate"
                " is chosen on the tuning slice, the scored text is the validation tail)"
            )
        if self.refit.enabled and not self.split.tune_fraction:
            raise ValueError("refit.enabled needs split.tune_fraction > 0 (there is nothing to refit on)")
        return self

    def digest(self) -> str:
        """A stable hash of every value, tagged on registered models to tell configurations apart."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def flat(self) -> dict[str, Any]:
        """Dotted keys (`train.epochs`), the form DVC and MLflow both use."""
        return {
            f"{section}.{key}": value
            for section, values in self.model_dump(mode="json").items()
            for key, value in values.items()
        }


def parse_params(raw: Any, origin: str = "params") -> Params:
    """Validate a mapping; one line naming every bad dotted key, what was given and what is allowed.

    One line, so that a log, a Prefect state message or a terminal shows the whole of it.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise ParamsError(f"{origin} is invalid: " + "; ".join(problems)) from None


def _describe(err: Any) -> str:
    key = ".".join(_printable(part) for part in err["loc"] if part != "[key]") or "params"
    # A whole section's value says nothing the message does not: show only scalar inputs.
    given = "" if err["type"] == "missing" or isinstance(err["input"], dict) else f" (got {_short(err['input'])})"
    hint = _did_you_mean(err["loc"]) if err["type"] == "extra_forbidden" else ""
    return f"{key}: {err['msg'].removeprefix('Value error, ')}{given}{hint}"


def _printable(part: Any) -> str:
    """A key as written, unless it holds a line break or other control: then quoted, so it stays one line."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def _short(value: Any, limit: int = 80) -> str:
    """A value's repr, cut: a 1 MB string or a deeply aliased YAML list must not become the message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """The known key a misspelt one is closest to, if any: `window.lenght` -> `window.length`."""
    *section, key = (str(part) for part in loc)
    fields = Params.model_fields
    if section:
        if section[0] not in fields or len(section) > 1:
            return ""
        fields = fields[section[0]].annotation.model_fields
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*section, close[0]])}?)" if close else ""


def read_yaml(path: Path, what: str, error: type[ParamsError] = ParamsError) -> Any:
    """A YAML file's content, or `error` in one line naming the file and where it is not UTF-8 or not YAML."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8: byte {data[exc.start]:#04x} at offset {exc.start}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML {_yaml_problem(exc, text)}") from None
    except RecursionError:
        raise error(f"{path}: not valid YAML: nested too deeply") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, saying where a value it cannot build is (PyYAML raises a bare ValueError).

    A 5000-digit integer or `2024-13-45` (a date) is valid YAML syntax; building the value fails.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as exc:
            reason = str(exc).split(";")[0]  # Python's int limit adds advice for programmers after a ';'
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {reason}", node.start_mark
            ) from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Where and what, in one line; PyYAML's own message spans several, with the offending text quoted."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    if isinstance(exc, yaml.reader.ReaderError):  # a control character, found before any parsing
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"at line {line}, column {column}: character U+{ord(text[exc.position]):04X} is not allowed"
    return f"({' '.join(str(exc).split())})"


def load_params(path: Path | str) -> Params:
    path = Path(path)
    raw = read_yaml(path, "params file")
    return parse_params(raw if raw is not None else {}, origin=str(path))


def with_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """Apply dotted-key overrides (`{"train.epochs": 5}`) and validate the result like a file."""
    raw = params.model_dump(mode="json")
    if raw["registry"]["model_name"] == default_model_name(params.corpus.source):
        raw["registry"]["model_name"] = None  # named after the corpus: named again after an overridden one
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in raw or not key:
            raise ParamsError(f"{dotted}: unknown key; sections are {', '.join(raw)}")
        raw[section][key] = value
    return parse_params(raw, origin="overrides")
