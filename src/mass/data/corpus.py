"""The embedded corpus, prepared once per vocabulary size into a cache directory.

The package ships the en-fr Bible as compressed text; the first run trains a joint sentencepiece model
on its training books and binarizes every split. Later runs (and every process of a torchrun job) reuse
the prepared directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mass.data.bible import export_embedded
from mass.data.binarize import prepare_dir
from mass.data.tokenizer import train_tokenizer

PARALLEL_SPLITS = {"train", "valid", "test"}


def cache_root() -> Path:
    """`$MASS_CACHE`, else `~/.cache/mass`."""
    return Path(os.environ.get("MASS_CACHE", Path.home() / ".cache" / "mass"))


def prepare_embedded(vocab_size: int, pair: str = "en-fr", cache: Path | None = None) -> Path:
    """Return a data directory for the embedded corpus, preparing it if it is not there yet."""
    out = (cache or cache_root()) / f"bible-{pair}-spm{vocab_size}"
    if (out / "meta.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".text-") as tmp:
        text = export_embedded(Path(tmp) / "text", pair)
        langs = pair.split("-")
        spm = train_tokenizer([text / f"train.{lang}" for lang in langs], Path(tmp) / "spm", vocab_size)
        inputs: dict[str, dict[str, Path]] = {}
        for path in sorted(text.iterdir()):
            split, _, lang = path.name.partition(".")
            if lang in langs:
                inputs.setdefault(split, {})[lang] = path
        prepare_dir(out, spm.path, inputs, parallel_splits=PARALLEL_SPLITS & set(inputs))
    return out
