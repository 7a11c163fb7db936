"""The embedded corpora, prepared (tokenized and binarized) once into a cache directory.

The package ships three corpora as compressed text: the en-fr Bible (pre-training and MT), Debian
package descriptions (summarization) and Shakespeare's speeches (dialogue). A run either trains a joint
sentencepiece model on a corpus's training split (pre-training from nothing) or reuses the tokenizer of
the checkpoint it starts from (fine-tuning); the prepared directory is keyed by that choice and by the
shipped files and package version it was made from, so later runs and every process of a torchrun job
reuse it, and an upgraded package never reads a cache made from other text.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mass import __version__
from mass.data import formats
from mass.data.binarize import prepare_dir
from mass.data.tokenizer import train_tokenizer
from mass.errors import MassError

# corpus name -> the sides (file suffixes) that become data: Bible verses by language; documents and
# summaries, contexts and responses as `src` and `tgt`.
CORPORA = {
    "bible": ("en", "fr"),  # verse-aligned WEB / Louis Segond 1910
    "debian": ("src", "tgt"),  # package long description -> one-line description (summarization)
    "shakespeare": ("src", "tgt"),  # consecutive speeches in the plays (dialogue)
}
PARALLEL_SPLITS = {"train", "valid", "test"}


def cache_root() -> Path:
    """`$MASS_CACHE`, else `~/.cache/mass`."""
    return Path(os.environ.get("MASS_CACHE", Path.home() / ".cache" / "mass"))


# corpus name -> its folder under mass/resources/
RESOURCES = {"bible": "bible/en-fr", "debian": "debian", "shakespeare": "shakespeare"}


def resource_dir(name: str) -> Path:
    """The shipped (compressed) files of corpus `name` inside the installed package."""
    if name not in RESOURCES:
        raise MassError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    return formats.embedded_dir(RESOURCES[name])


def export_corpus(name: str, out_dir: Path) -> Path:
    """Write a shipped corpus as plain text files `<split>.<side>` into `out_dir`."""
    resource_dir(name)  # a clear error for an unknown name
    return formats.export_embedded(RESOURCES[name], out_dir)


def cache_dir(
    name: str, tokenizer: Path | None, vocab_size: int, tokenizer_sentences: int, cache: Path | None = None
) -> Path:
    """Where `prepare_corpus` keeps corpus `name` prepared with this tokenizer choice."""
    if tokenizer is None:
        key = f"spm{vocab_size}" + (f"-n{tokenizer_sentences}" if tokenizer_sentences < 1_000_000 else "")
    else:
        key = "tok-" + hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()[:12]
    shipped = hashlib.sha256(__version__.encode())
    for path in sorted(resource_dir(name).iterdir()):
        shipped.update(path.name.encode() + b"\0" + path.read_bytes())
    return (cache or cache_root()) / f"{name}-{shipped.hexdigest()[:8]}-{key}"


def _inputs(text: Path, sides: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    inputs: dict[str, dict[str, Path]] = {}
    for path in sorted(text.iterdir()):
        split, _, side = path.name.partition(".")
        if side in sides:
            inputs.setdefault(split, {})[side] = path
    return inputs


def prepare_corpus(
    name: str,
    tokenizer: Path | None = None,
    vocab_size: int = 8000,
    cache: Path | None = None,
    tokenizer_sentences: int = 1_000_000,
) -> Path:
    """Return a prepared data directory for shipped corpus `name`, preparing it on first use.

    Args:
        name: "bible", "debian" or "shakespeare".
        tokenizer: an existing sentencepiece model (a checkpoint's); None trains one on the training split.
        vocab_size: size of the trained tokenizer (ignored with `tokenizer`).
        tokenizer_sentences: the trained tokenizer sees a seeded sample of at most this many lines.
    """
    out = cache_dir(name, tokenizer, vocab_size, tokenizer_sentences, cache)
    if (out / "meta.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.with_name(f".{out.name}.lock")):  # two runs started together build it once
        if (out / "meta.json").is_file():
            return out
        _build(name, out, tokenizer, vocab_size, tokenizer_sentences)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` while the block runs (POSIX; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(name: str, out: Path, tokenizer: Path | None, vocab_size: int, tokenizer_sentences: int) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".text-") as tmp:
        text = export_corpus(name, Path(tmp) / "text")
        inputs = _inputs(text, CORPORA[name])
        if tokenizer is None:
            train_files = list(inputs["train"].values())
            tokenizer = train_tokenizer(
                train_files, Path(tmp) / "spm", vocab_size, max_sentences=tokenizer_sentences
            ).path
        prepare_dir(out, Path(tokenizer), inputs, parallel_splits=PARALLEL_SPLITS & set(inputs))


def prepare_embedded(vocab_size: int = 8000) -> Path:
    """The en-fr Bible with a tokenizer trained on it: the default data of pre-training."""
    return prepare_corpus("bible", None, vocab_size)
