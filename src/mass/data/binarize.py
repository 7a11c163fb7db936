"""Tokenized corpora as memory-mapped arrays, so that training never holds a corpus in RAM.

A binarized corpus ``<prefix>`` is two files:

* ``<prefix>.bin``: the token ids of all sentences, concatenated (uint16, or int32 for vocabularies of
  65536 and more). No BOS/EOS are stored; the model adds them.
* ``<prefix>.idx``: a ``.npy`` int64 array of n+1 offsets into ``.bin``;
  sentence i is ``bin[idx[i]:idx[i+1]]``.

Both are written by streaming, so memory stays flat however long the corpus is, and atomically, so an
interrupted run leaves either the old files or the new ones, never a half-written pair.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mass.data.formats import check_replaceable
from mass.data.tokenizer import Tokenizer
from mass.errors import MassError

_READ_BLOCK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
TOKENIZER_FILE = "spm.model"
META_FILE = "meta.json"
# Held-out splits whose text is kept beside their tokens (``text/<split>.<lang>``): BLEU and ROUGE are scored
# against the original references, which decoding subwords would not give back exactly (normalisation).
TEXT_SPLITS = ("valid", "test")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id: half the disk and page cache of int32."""
    return np.dtype(np.uint16 if vocab_size < 65536 else np.int32)


def binarize(
    text_path: Path,
    tokenizer: Tokenizer,
    out_prefix: Path,
    *,
    max_line_chars: int = 10_000,
    chunk_lines: int = 10_000,
) -> int:
    """Tokenize a one-sentence-per-line UTF-8 file into ``<out_prefix>.bin`` and ``<out_prefix>.idx``.

    Returns:
        The number of sentences.

    Raises:
        MassError: with the file and 1-based line for a missing or empty file, invalid UTF-8, a blank
            line, a line longer than ``max_line_chars`` or one that encodes to no tokens.
    """
    text_path, out_prefix = Path(text_path), Path(out_prefix)
    if not text_path.is_file():
        raise MassError("text file not found", path=text_path)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    bin_tmp = _temp_path(out_prefix, ".bin")
    idx_tmp = _temp_path(out_prefix, ".idx")
    len_tmp = _temp_path(out_prefix, ".len")
    try:
        with open(bin_tmp, "wb") as bin_f, open(len_tmp, "wb") as len_f:
            dtype = token_dtype(tokenizer.vocab_size)
            n = 0
            for first_line, lines in _read_chunks(text_path, max_line_chars, chunk_lines):
                n += _write_chunk(tokenizer, lines, dtype, bin_f, len_f, text_path, first_line)
        if n == 0:
            raise MassError("file is empty; expected one sentence per line", path=text_path)
        _write_offsets(len_tmp, idx_tmp, n)
        os.replace(bin_tmp, Path(f"{out_prefix}.bin"))
        os.replace(idx_tmp, Path(f"{out_prefix}.idx"))
        return n
    finally:
        for tmp in (bin_tmp, idx_tmp, len_tmp):
            tmp.unlink(missing_ok=True)


def _temp_path(out_prefix: Path, suffix: str) -> Path:
    """A fresh file next to the output, so that os.replace stays on one file system."""
    fd, name = tempfile.mkstemp(dir=out_prefix.parent, prefix=f".{out_prefix.name}{suffix}.", suffix=".tmp")
    os.close(fd)
    os.chmod(name, 0o666 & ~umask())  # as a plain open() would create it, not mkstemp's 0600
    return Path(name)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_chunks(path: Path, max_line_chars: int, chunk_lines: int) -> Iterator[tuple[int, list[str]]]:
    """(1-based number of the first line, lines) for consecutive chunks of validated lines."""
    chunk: list[str] = []
    first = 1
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            chunk.append(_decode_line(raw, max_line_chars, path, lineno))
            if len(chunk) == chunk_lines:
                yield first, chunk
                chunk, first = [], lineno + 1
    if chunk:
        yield first, chunk


def _decode_line(raw: bytes, max_line_chars: int, path: Path, lineno: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MassError(f"invalid UTF-8 ({exc.reason} at byte {exc.start})", path, lineno) from exc
    line = line.rstrip("\n").rstrip("\r")
    if lineno == 1:
        line = line.removeprefix("\ufeff")  # a byte-order mark is not text (read_source_lines drops it too)
    if len(line) > max_line_chars:
        raise MassError(f"line has {len(line)} characters, more than max_line_chars={max_line_chars}", path, lineno)
    if not line.strip():
        raise MassError(
            "empty line; the corpus must have exactly one sentence per line, so remove blank lines "
            "(and, for parallel files, the matching line of the other language)",
            path,
            lineno,
        )
    return line


def _write_chunk(
    tokenizer: Tokenizer,
    lines: list[str],
    dtype: np.dtype,
    bin_f: BinaryIO,
    len_f: BinaryIO,
    path: Path,
    first_line: int,
) -> int:
    encoded = tokenizer.encode_batch(lines)
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise MassError("line encodes to no tokens", path, first_line + int(empty[0]))
    tokens = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum()))
    tokens.tofile(bin_f)
    lengths.tofile(len_f)
    return len(lines)


def _write_offsets(len_path: Path, idx_path: Path, n: int, block: int = 1 << 20) -> None:
    """Cumulative sums of the streamed lengths, block by block so that memory stays flat."""
    lengths = np.memmap(len_path, dtype=np.int64, mode="r", shape=(n,))
    idx = np.lib.format.open_memmap(idx_path, mode="w+", dtype=np.int64, shape=(n + 1,))
    idx[0] = 0
    for start in range(0, n, block):
        stop = min(start + block, n)
        idx[start + 1 : stop + 1] = idx[start] + np.cumsum(lengths[start:stop])
    idx.flush()
    del idx, lengths


def count_lines(path: Path) -> int:
    """Lines in a file (a last line without newline counts), read in blocks."""
    path = Path(path)
    if not path.is_file():
        raise MassError("text file not found", path=path)
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def check_parallel(src_path: Path, tgt_path: Path) -> int:
    """Check that two sides of a parallel corpus have the same number of lines, and return it."""
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise MassError(
            f"parallel files differ in length: {src_path} has {n_src} lines but {tgt_path} has {n_tgt}",
            path=src_path,
        )
    return n_src


class TokenArray:
    """Read-only view of a binarized corpus; opening is cheap because nothing is read until indexed.

    Args:
        prefix: the ``out_prefix`` given to :func:`binarize`.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        self._offsets = _load_offsets(Path(f"{self.prefix}.idx"))
        self._tokens = _load_tokens(Path(f"{self.prefix}.bin"), int(self._offsets[-1]))
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        """Token ids of sentence ``i`` as an int64 copy (safe to modify, detached from the file)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sentence {i} out of range for {n} sentences in {self.prefix}")
        i = int(i) % n
        return np.array(self._tokens[self._offsets[i] : self._offsets[i + 1]], dtype=np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """Sentence lengths in tokens (int64), computed once."""
        if self._lengths is None:
            self._lengths = np.diff(self._offsets).astype(np.int64)
        return self._lengths

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """How often each token id occurs in the corpus, (vocab_size,) int64."""
        return np.bincount(self._tokens, minlength=vocab_size)

    @property
    def num_tokens(self) -> int:
        return int(self._offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return self._tokens.dtype

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its data; reopen the files in the receiving process instead.
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])


def _load_offsets(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MassError("binarized index file not found", path=path)
    try:
        offsets = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        # numpy's own message for a non-.npy file suggests unpickling it: never, so do not repeat it
        raise MassError("not a valid index file (not a NumPy .npy array): prepare the data again", path=path) from exc
    if offsets.ndim != 1 or offsets.dtype != np.int64 or len(offsets) < 1 or offsets[0] != 0:
        raise MassError("not a valid index file (expected int64 offsets starting at 0)", path=path)
    return offsets


def _load_tokens(path: Path, num_tokens: int) -> np.ndarray:
    if not path.is_file():
        raise MassError("binarized token file not found", path=path)
    size = path.stat().st_size
    if num_tokens == 0:
        if size:
            raise MassError("token file is not empty but its index says 0 tokens", path=path)
        return np.zeros(0, dtype=np.uint16)
    itemsize, rest = divmod(size, num_tokens)
    if rest or itemsize not in (2, 4):
        raise MassError(
            f"token file has {size} bytes, which does not match the {num_tokens} tokens of its index",
            path=path,
        )
    return np.memmap(path, dtype=np.uint16 if itemsize == 2 else np.int32, mode="r", shape=(num_tokens,))


@dataclass
class DataDir:
    """A prepared data directory: ``spm.model``, ``meta.json`` and ``<split>.<lang>.bin/.idx`` files."""

    path: Path
    langs: list[str]
    vocab_size: int
    tokenizer_path: Path
    splits: dict[str, dict[str, int]]

    def has(self, split: str, lang: str) -> bool:
        return lang in self.splits.get(split, {})

    def array(self, split: str, lang: str) -> TokenArray:
        """The binarized corpus of one split and language, checked against meta.json."""
        if not self.has(split, lang):
            available = ", ".join(f"{s}.{lang_}" for s in sorted(self.splits) for lang_ in sorted(self.splits[s]))
            raise MassError(f"no data for split '{split}' language '{lang}' (has: {available})", path=self.path)
        arr = TokenArray(self.path / f"{split}.{lang}")
        expected = self.splits[split][lang]
        if len(arr) != expected:
            raise MassError(f"{split}.{lang} has {len(arr)} sentences, meta.json says {expected}", path=self.path)
        return arr

    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.tokenizer_path)

    def has_text(self, split: str, lang: str) -> bool:
        return (self.path / "text" / f"{split}.{lang}").is_file()

    def text(self, split: str, lang: str) -> Path:
        """The original text of a held-out split (see `TEXT_SPLITS`), as `mass evaluate` scores it."""
        if not self.has_text(split, lang):
            raise MassError(
                f"no text kept for split '{split}' language '{lang}' (prepare keeps it for "
                f"{' and '.join(TEXT_SPLITS)}): give --input and --reference",
                path=self.path,
            )
        return self.path / "text" / f"{split}.{lang}"


def prepare_dir(
    out_dir: Path,
    tokenizer_path: Path,
    inputs: dict[str, dict[str, Path]],
    parallel_splits: set[str] | None = None,
    *,
    overwrite: bool = False,
    max_line_chars: int = 10_000,
) -> Path:
    """Binarize text files into a data directory, built aside and renamed so it is never half-written.

    Args:
        out_dir: the directory to create.
        tokenizer_path: the SentencePiece model; copied in as ``spm.model``.
        inputs: split -> language -> text file, e.g. ``{"train": {"en": p1, "fr": p2}}``.
        parallel_splits: splits whose languages must be line-aligned (checked before any work);
            splits listed here but absent from ``inputs`` are ignored.
        overwrite: replace an existing ``out_dir`` instead of refusing.
        max_line_chars: see :func:`binarize`.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, inputs, overwrite)
    for split in sorted(parallel_splits or set()):
        files = [inputs[split][lang] for lang in sorted(inputs.get(split, {}))]
        for other in files[1:]:
            check_parallel(files[0], other)
    tokenizer = Tokenizer(tokenizer_path)

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        os.chmod(tmp_dir, 0o777 & ~umask())  # mkdtemp's 0700 would hide shared data from other users
    except OSError as exc:
        raise MassError(f"cannot create the output directory ({exc.strerror or exc})", path=out_dir) from None
    try:
        shutil.copyfile(tokenizer_path, tmp_dir / TOKENIZER_FILE)
        for split in TEXT_SPLITS:
            for lang, path in sorted(inputs.get(split, {}).items()):
                (tmp_dir / "text").mkdir(exist_ok=True)
                shutil.copyfile(path, tmp_dir / "text" / f"{split}.{lang}")
        counts = {
            split: {
                lang: binarize(path, tokenizer, tmp_dir / f"{split}.{lang}", max_line_chars=max_line_chars)
                for lang, path in sorted(langs.items())
            }
            for split, langs in sorted(inputs.items())
        }
        meta = {
            "langs": sorted({lang for langs in inputs.values() for lang in langs}),
            "vocab_size": tokenizer.vocab_size,
            "splits": counts,
        }
        (tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        try:
            _move_into_place(tmp_dir, out_dir)
        except OSError as exc:
            raise MassError(f"cannot replace the output directory ({exc.strerror or exc})", path=out_dir) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def check_output(out_dir: Path, inputs: dict[str, dict[str, Path]], overwrite: bool) -> None:
    """Refuse, before any work, an output that exists (unless overwriting an earlier data directory)."""
    _check_inputs(inputs)
    if out_dir.exists() and not overwrite:
        raise MassError("output data directory already exists; remove it or allow overwriting", path=out_dir)
    for langs in inputs.values():
        for path in langs.values():
            if out_dir.resolve() in Path(path).resolve().parents:
                raise MassError("is inside the output directory, which would be replaced", path=path)
    check_replaceable(out_dir, "a prepared data directory")


def _check_inputs(inputs: dict[str, dict[str, Path]]) -> None:
    """Split and language names become file names, so keep them simple and unambiguous."""
    if not inputs:
        raise MassError("no input text files given")
    for split, langs in inputs.items():
        if not langs:
            raise MassError(f"split '{split}' has no languages")
        for name in (split, *langs):
            if not _NAME_RE.match(name):
                raise MassError(f"invalid split or language name '{name}' (use letters, digits, '_' or '-')")
        for path in langs.values():
            if not Path(path).is_file():
                raise MassError("text file not found", path=path)


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp_dir, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    try:
        os.replace(out_dir, old / "data")
        try:
            os.replace(tmp_dir, out_dir)
        except OSError:
            os.replace(old / "data", out_dir)  # the previous directory goes back
            raise
    finally:
        if out_dir.exists():  # never delete the previous directory unless something stands in its place
            shutil.rmtree(old, ignore_errors=True)


def load_data_dir(path: Path) -> DataDir:
    """Open a directory written by :func:`prepare_dir`."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise MassError("not a prepared data directory (meta.json missing); run prepare first", path=path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = DataDir(
            path=path,
            langs=[str(lang) for lang in meta["langs"]],
            vocab_size=int(meta["vocab_size"]),
            tokenizer_path=path / TOKENIZER_FILE,
            splits={str(s): {str(lang): int(n) for lang, n in langs.items()} for s, langs in meta["splits"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MassError(f"invalid meta.json ({type(exc).__name__}: {exc})", path=meta_path) from exc
    if not data.tokenizer_path.is_file():
        raise MassError("tokenizer model missing from data directory", path=data.tokenizer_path)
    return data
