"""Typed configuration: nested dataclasses, loaded from YAML with dotted `key.sub=value` overrides.

Unknown keys and wrong types are errors, so a typo never silently trains the wrong model. The resolved
config (every field explicit) is saved with each run and each checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mass.errors import MassError
from mass.masking import MaskConfig, NoiseConfig
from mass.model import PRESETS, ModelConfig

PRECISIONS = ("fp32", "bf16", "fp16")  # train.precision


@dataclass
class DataConfig:
    """Where the text comes from and how it is batched.

    Attributes:
        dir: a directory made by `mass prepare`; empty means the shipped corpus `corpus`, prepared on first use.
        corpus: "bible" (en-fr), "debian" (summarization) or "shakespeare" (dialogue).
        langs: languages of the run, in the order of their language ids.
        vocab_size: size of the sentencepiece model trained for a shipped corpus (without `init_from`).
        tokenizer_sentences: the tokenizer is trained on a seeded sample of at most this many lines (each
            language's share goes with the square root of its line count).
        max_tokens: token budget of a batch (sentences x padded length, source side).
        max_len: longer sentences (in subwords) are left out of training.
        min_len: shorter sentences are left out of training.
        train_split, valid_split: split names inside the data directory.
        valid_sentences: cap on validation sentences per language (0 = all).
        first_n: use only the first N training pairs/sentences (0 = all), for low-resource runs.
    """

    dir: str = ""
    corpus: str = "bible"
    langs: list[str] = field(default_factory=lambda: ["en", "fr"])
    vocab_size: int = 8000
    tokenizer_sentences: int = 1_000_000
    max_tokens: int = 3000
    max_len: int = 128
    min_len: int = 1
    train_split: str = "train"
    valid_split: str = "valid"
    valid_sentences: int = 1000
    first_n: int = 0

    def __post_init__(self) -> None:
        if not self.langs or len(set(self.langs)) != len(self.langs):
            raise ValueError(f"langs must name each language once, not {self.langs}")
        if self.max_tokens < 1 or self.max_len < 1 or not 0 <= self.min_len <= self.max_len:
            sizes = f"{self.max_tokens}, {self.min_len}, {self.max_len}"
            raise ValueError(f"need max_tokens >= 1 and 0 <= min_len <= max_len, not {sizes}")
        if self.valid_sentences < 0 or self.first_n < 0:
            raise ValueError("valid_sentences and first_n must be >= 0 (0 = all)")


@dataclass
class OptimConfig:
    """Adam with inverse-square-root warm-up, as in the paper (Adam 0.9/0.98, 4000 warm-up steps)."""

    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 4000
    clip_norm: float = 1.0
    accum_steps: int = 1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), not {self.betas}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, not {self.accum_steps}")
        if not (self.lr > 0 and self.eps > 0) or min(self.weight_decay, self.warmup_steps, self.clip_norm) < 0:
            raise ValueError("need lr > 0, eps > 0 and weight_decay, warmup_steps, clip_norm >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {self.label_smoothing}")


@dataclass
class TrainConfig:
    """The loop: length, logging, evaluation, checkpoints, determinism.

    Attributes:
        max_steps: optimizer updates to run (the run resumes up to this many).
        time_budget: stop after this many minutes of training (0 = no limit), counted across resumptions:
            rerunning a run that used its budget changes nothing.
        log_interval, eval_interval, save_interval: in updates.
        keep_checkpoints: how many recent checkpoints to keep besides the best.
        patience: stop after this many evaluations without improvement (0 = never).
        seed: seeds data order, masking, dropout and initialisation.
        device: "auto", "cpu", "cuda" or "cuda:N".
        threads: CPU threads for torch (0 = torch's default).
        precision: "fp32", or "bf16" / "fp16" autocast for the forward passes (weights, gradients and Adam
            stay fp32; fp16 adds dynamic loss scaling). For GPUs: CPUs without bf16 units run it far slower.
        tensorboard: also write every log record as TensorBoard scalars under RUN_DIR/tensorboard/ (needs the
            `tensorboard` package: `pip install -e ".[tensorboard]"`); metrics.jsonl is written either way.
    """

    max_steps: int = 2000
    time_budget: float = 0.0
    log_interval: int = 10
    eval_interval: int = 200
    save_interval: int = 200
    keep_checkpoints: int = 2
    patience: int = 0
    seed: int = 1
    device: str = "auto"
    threads: int = 0
    precision: str = "fp32"
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if min(self.log_interval, self.eval_interval, self.save_interval, self.keep_checkpoints) < 1:
            # keep_checkpoints 0 would delete the checkpoint just written: a run that cannot resume
            raise ValueError("log_interval, eval_interval, save_interval and keep_checkpoints must be >= 1")
        if min(self.max_steps, self.time_budget, self.patience, self.threads) < 0:
            raise ValueError("max_steps, time_budget, patience and threads must be >= 0 (time_budget 0: no limit)")


OBJECTIVES = ("mass", "dae", "translate", "bt")


@dataclass
class ObjectiveConfig:
    """One entry of the objective schedule (the original's --mass_steps / --bt_steps).

    `mass` and `dae` (denoising auto-encoder, XLM's --ae_steps) use `lang`; `translate` (any supervised
    seq2seq task) and `bt` (back-translation) use `src` and `tgt`, the languages of each side (they choose
    the language embeddings); `bt` with src=en, tgt=fr is the original's `en-fr-en`: translate English
    into French, learn to recover the English.
    The data files default to the language names (`train.fr`, `train.en`); `src_data`/`tgt_data` name
    other sides, e.g. `src` and `tgt` for summarization, where both sides are English. The weight
    scales the loss. `restrict_vocab` (bt only) lets the translation use only subwords seen in `tgt`'s
    training text, so that it cannot copy words of the sentence it is to recover (UnsupervisedMT's --vocab).
    """

    name: str = "mass"
    lang: str = ""
    src: str = ""
    tgt: str = ""
    src_data: str = ""
    tgt_data: str = ""
    weight: float = 1.0
    every: int = 1  # run on every n-th update only: sets the proportions of the schedule
    restrict_vocab: bool = False

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r} (known: {', '.join(OBJECTIVES)})")
        if self.name in ("mass", "dae"):
            if not self.lang or self.src or self.tgt or self.tgt_data:
                raise ValueError(f"a {self.name} objective takes lang (and src_data), not src/tgt/tgt_data")
        elif not self.src or not self.tgt or self.lang:
            raise ValueError(f"a {self.name} objective takes src and tgt, not lang")
        elif self.name == "bt" and (self.src == self.tgt or self.tgt_data):
            raise ValueError("a bt objective goes through another language: src and tgt must differ, no tgt_data")
        if self.restrict_vocab and self.name != "bt":
            raise ValueError(f"restrict_vocab is for bt objectives, not {self.name}")
        if not self.weight > 0 or self.every < 1:
            raise ValueError(f"need weight > 0 and every >= 1, not weight {self.weight}, every {self.every}")

    @property
    def src_side(self) -> str:
        return self.src_data or self.src or self.lang

    @property
    def tgt_side(self) -> str:
        return self.tgt_data or self.tgt


@dataclass
class GenerationConfig:
    """Decoding options (fairseq's names where they exist)."""

    beam: int = 5
    length_penalty: float = 1.0
    min_len: int = 0
    max_len_a: float = 1.5  # at most max_len_a * source length + max_len_b tokens
    max_len_b: int = 10
    no_repeat_ngram: int = 0
    nbest: int = 1
    max_tokens: int = 6000  # source tokens per batch
    # Sampling draws each token instead of searching (beam is then unused, length_penalty only normalises the
    # scores); nbest draws that many samples per input. The same seed, input and max_tokens give the same samples.
    sampling: bool = False
    sampling_topk: int = 0  # draw among the k most probable tokens only (0: all)
    sampling_topp: float = 1.0  # nucleus: among the fewest most probable tokens holding this much probability
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.beam < 1 or self.nbest < 1 or (self.nbest > self.beam and not self.sampling):
            raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, not beam {self.beam}, nbest {self.nbest}")
        if min(self.min_len, self.max_len_a, self.max_len_b, self.no_repeat_ngram) < 0 or self.max_tokens < 1:
            raise ValueError("min_len, max_len_a, max_len_b and no_repeat_ngram must be >= 0, max_tokens >= 1")
        if self.max_len_a == 0 and self.max_len_b == 0:
            raise ValueError("max_len_a and max_len_b are both 0: every output would be empty")
        if self.sampling_topk < 0 or not 0.0 < self.sampling_topp <= 1.0 or not self.temperature > 0.0:
            raise ValueError("sampling needs sampling_topk >= 0, 0 < sampling_topp <= 1 and temperature > 0")


@dataclass
class Config:
    run_dir: str = "runs/pretrain"
    init_from: str = ""  # a checkpoint or run directory to start from (architecture, tokenizer, weights)
    scratch: bool = False  # with init_from: take its architecture and tokenizer but not its weights
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # for `dae` objectives
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerationConfig = field(default_factory=GenerationConfig)
    objectives: list[ObjectiveConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.objectives and all(obj.every > 1 for obj in self.objectives):
            raise ValueError("some objective needs every: 1, else update 1 would train on nothing")


def to_dict(cfg: Any) -> dict:
    return asdict(cfg)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Validate (and lightly coerce: int -> float) one value against a type annotation."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MassError(f"{where} must be a mapping, not {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_type(value, option, where)
            except MassError as e:
                errors.append(str(e))
        raise MassError(f"{where}: {value!r} matches none of {tp}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise MassError(f"{where} must be a list, not {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise MassError(f"{where} must be a mapping, not {type(value).__name__} {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {
            _check_type(k, key_type, f"{where} key"): _check_type(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is type(None):
        if value is not None:
            raise MassError(f"{where} must be null")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # e.g. a language code or path that YAML read as a number
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads no/yes/on/off (Norwegian is `no`) as booleans
        raise MassError(f"{where} must be str, not bool {value!r}: quote it (YAML reads yes/no/on/off as booleans)")
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise MassError(f"{where} must be {tp.__name__}, not {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    data = dict(data)
    base = None
    if cls is ModelConfig and "preset" in data:
        preset = data.pop("preset")
        if preset not in PRESETS:
            raise MassError(f"{where}.preset must be one of {sorted(PRESETS)}, not {preset!r}")
        base = PRESETS[preset]()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)  # keys YAML read as numbers too
    if unknown:
        raise MassError(f"unknown key {where}.{unknown[0]} (known: {', '.join(sorted(known))})")
    values = {name: _check_type(v, hints[name], f"{where}.{name}") for name, v in data.items()}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except (ValueError, TypeError) as e:
        raise MassError(f"{where}: {e}") from None


def apply_override(raw: dict, override: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in override:
        raise MassError(f"override {override!r} must look like key.sub=value")
    key, text = override.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MassError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, kind: str = "config") -> dict:
    """A YAML mapping from a file (empty: {}), with one-line errors naming the file and, where YAML knows
    it, the line: missing file, not UTF-8, bad syntax, a key given twice, not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise MassError(f"{kind} file not found", path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise MassError(f"not UTF-8 ({e.reason} at byte {e.start})", path) from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise MassError(f"invalid YAML: {getattr(e, 'problem', e)}", path, None if line is None else line + 1) from None
    if not isinstance(raw, dict):
        raise MassError(f"a {kind} file must be a mapping of keys to values", path)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated into a `Config`."""
    raw = read_yaml(path, "config") if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    try:
        return from_dict(Config, raw)
    except MassError as e:
        if path is not None and e.path is None:
            raise MassError(e.message, path) from None
        raise


def save_config(cfg: Config, path: Path) -> None:
    from mass.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
