"""Shared helpers for tests that need a tiny prepared data directory or a tiny training config.

Typical use, with a session-scoped fixture so the (few-second) data dir is built once::

    from helpers import fast_training, make_data_dir, tiny_config

    @pytest.fixture(scope="session")
    def data_dir(tmp_path_factory):
        return make_data_dir(tmp_path_factory.mktemp("data"))

    def test_something(data_dir, tmp_path):
        cfg = tiny_config(data_dir, tmp_path / "run", "train.max_steps=4")
        with fast_training():  # no curves.png, torch thread count restored afterwards
            train(cfg)

The corpus is two synthetic "languages": `en` sentences are random word sequences from a small lexicon,
and each `fr` line is a word-by-word "translation" of the matching `en` line (so the files are parallel
and a translation objective is learnable).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mass.config import Config, load_config
from mass.data.binarize import prepare_dir
from mass.data.tokenizer import train_tokenizer

_SYLLABLES = "ka lo mi ne su ta ri po de fa gu be vo zi".split()


def _lexicon(seed: int, n: int) -> list[str]:
    """`n` distinct pseudo-words of 1-3 syllables (deterministic in `seed`)."""
    rng, words = random.Random(seed), []
    while len(words) < n:
        word = "".join(rng.choices(_SYLLABLES, k=rng.randint(1, 3)))
        if word not in words:
            words.append(word)
    return words


# Two 120-word "languages" with a fixed word-by-word mapping en -> fr, so aligned lines are translations.
EN_WORDS = _lexicon(0, 120)
FR_OF = dict(zip(EN_WORDS, [w[::-1] + "x" for w in _lexicon(1, 120)], strict=True))


def synthetic_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """`n` aligned (en, fr) sentences of 3 to 10 words, deterministic in `seed`."""
    rng = random.Random(seed)
    en = [rng.choices(EN_WORDS, k=rng.randint(3, 10)) for _ in range(n)]
    return [" ".join(s) for s in en], [" ".join(FR_OF[w] for w in s) for s in en]


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write one sentence per line (UTF-8, trailing newline) and return `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_corpus(root: Path, n_train: int = 300, n_valid: int = 40) -> dict[str, str]:
    """Plain-text files `root/text/{train,valid}.{en,fr}`; returns {"train": prefix, "valid": prefix}."""
    prefixes = {}
    for split, n, seed in (("train", n_train, 0), ("valid", n_valid, 1)):
        en, fr = synthetic_pairs(n, seed)
        prefix = Path(root) / "text" / split
        write_lines(Path(f"{prefix}.en"), en)
        write_lines(Path(f"{prefix}.fr"), fr)
        prefixes[split] = str(prefix)
    return prefixes


def make_data_dir(root: Path, vocab_size: int = 300, n_train: int = 300, n_valid: int = 40) -> Path:
    """A prepared (parallel en/fr, train+valid) data directory at `root/data`; tokenizer trained on train."""
    root = Path(root)
    prefixes = write_corpus(root, n_train, n_valid)
    tok = train_tokenizer([Path(prefixes["train"] + ".en"), Path(prefixes["train"] + ".fr")], root / "spm", vocab_size)
    inputs = {split: {lang: Path(f"{p}.{lang}") for lang in ("en", "fr")} for split, p in prefixes.items()}
    return prepare_dir(root / "data", tok.path, inputs, parallel_splits={"train", "valid"})


TINY_OVERRIDES = (
    "model.preset=tiny",
    "model.dropout=0.0",
    "model.attention_dropout=0.0",
    "train.device=cpu",
    "train.threads=1",
    "train.max_steps=6",
    "train.eval_interval=3",
    "train.save_interval=3",
    "train.log_interval=1",
    "data.max_tokens=400",
    "data.max_len=64",
    "data.valid_sentences=32",
    "optim.warmup_steps=5",
)


def tiny_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """Dotted overrides for a tiny CPU run on `data_dir` (later entries in `extra` win)."""
    return [*TINY_OVERRIDES, f"data.dir={data_dir}", f"run_dir={run_dir}", *extra]


def tiny_config(data_dir: Path, run_dir: Path, *extra: str, path: Path | None = None) -> Config:
    """`load_config(path, tiny_overrides(...))`: a validated config for a tiny, fast run."""
    return load_config(path, tiny_overrides(data_dir, run_dir, *extra))


def read_log(run_dir: Path) -> list[dict]:
    """The records of `run_dir/metrics.jsonl` (training records have "loss", evaluations "valid_ppl")."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged training loss."""
    return {r["step"]: r["loss"] for r in read_log(run_dir) if "loss" in r}


@contextlib.contextmanager
def fast_training() -> Iterator[None]:
    """For module/session fixtures that train: skip drawing curves.png (about a second per run) and give the
    process its torch thread count back afterwards (train() applies `train.threads` process-wide)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mass.plots.plot_metrics", lambda log_path, out: None)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
