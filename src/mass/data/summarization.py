"""Headline-style summarization pairs from Debian package descriptions.

Every Debian package has a one-line short description and a long description in paragraphs; the
``Translation-en`` index lists both. Like Gigaword's headline generation (first sentence of an
article -> its headline), a pair here is (first paragraph of the long description -> short
description). The builder cleans the text, drops boilerplate shared by many packages, splits by
package family so that no family and no first paragraph is on both sides of a split, and writes one
example per line. A prepared copy is shipped, xz-compressed, in ``mass/resources/debian``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from mass.data.formats import embedded_dir, export_embedded, read_embedded, write_corpus_dir
from mass.errors import MassError

__all__ = [
    "build_debian",
    "parse_translation",
    "clean_paragraph",
    "package_family",
    "split_of",
    "template_key",
    "embedded_dir",
    "export_embedded",
    "read_embedded",
    "APT_LISTS",
    "APT_HINT",
]

APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = Path("/usr/lib/apt/apt-helper")
APT_HINT = "run: apt-get update -o Acquire::Languages=en"
EMBEDDED = "debian"

MIN_SOURCE_WORDS = 5
MAX_SOURCE_WORDS = 100
# A first paragraph shared by more packages than this is suite boilerplate ("Qt is a cross-platform C++
# application framework...", 517 packages): their short descriptions differ in what only later
# paragraphs say, so no single target follows from it. All its pairs are dropped.
MAX_SHARED = 4
# Hash-based split of package families: per 10,000 buckets.
TEST_PER_10K = 400
VALID_PER_10K = 300
SPLIT_SALT = "mass-debian-v1"

Record = dict[str, str | list[str]]

# --- reading ---------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """Return an index file's text, decompressing by suffix (apt-helper for lz4/zstd)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".xz" or suffix == ".lzma":
            data = lzma.decompress(path.read_bytes())
        elif suffix == ".gz":
            data = gzip.decompress(path.read_bytes())
        elif suffix == ".bz2":
            data = bz2.decompress(path.read_bytes())
        elif suffix in (".lz4", ".zst"):
            if not APT_HELPER.is_file():
                raise MassError(f"{suffix} index needs {APT_HELPER} to decompress (or pass a plain copy)", path=path)
            proc = subprocess.run([str(APT_HELPER), "cat-file", str(path)], capture_output=True)
            if proc.returncode != 0:
                why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                raise MassError(f"apt-helper cat-file failed ({why[-1] if why else proc.returncode})", path=path)
            data = proc.stdout
        else:
            data = path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise MassError(f"cannot read index file: {exc}", path=path) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MassError(f"index file is not UTF-8 (byte {exc.start})", path=path) from exc


def parse_translation(text: str) -> Iterator[Record]:
    """Yield ``{"package", "md5", "short", "long": [lines]}`` per record of a Translation-en index.

    Why a hand parser: the format is RFC 822-like with continuation lines starting with a space; the
    long description is those continuation lines, with the leading space removed (" ." separates
    paragraphs and stays as "."). Records lacking a package or description are skipped.
    """
    rec: Record = {}
    field = ""
    for line in text.splitlines() + [""]:
        if not line.strip():
            if rec.get("package") and rec.get("short") is not None:
                rec.setdefault("long", [])
                yield rec
            rec, field = {}, ""
            continue
        if line[0] in " \t":
            if field == "Description-en":
                rec.setdefault("long", []).append(line[1:])  # type: ignore[union-attr]
            continue
        field, _, value = line.partition(":")
        if field == "Package":
            rec["package"] = value.strip()
        elif field == "Description-md5":
            rec["md5"] = value.strip()
        elif field == "Description-en":
            rec["short"] = value.strip()
            rec["long"] = []


def _find_indexes() -> list[Path]:
    paths = sorted(p for p in APT_LISTS.glob("*_i18n_Translation-en*") if not p.name.endswith(".diff"))
    if not paths:
        raise MassError(f"no Translation-en index in {APT_LISTS}; {APT_HINT}")
    return paths


# --- cleaning --------------------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[*+\-o•]|\d{1,2}[.)])\s+")
_WS = re.compile(r"\s+")
_SENT_END = re.compile(r"[.!?][\"')\]]*$")
_TRANSITIONAL = re.compile(r"\b(transitional|dummy|obsolete)\b.*\bpackage\b|\btransitional\b", re.I)


def clean_paragraph(lines: Iterable[str]) -> str:
    """Join one paragraph's lines into one line: bullets unmarked, whitespace collapsed.

    Why: bullet markers (``*``, ``-``, ``o``, ``1.``) are layout, not language; a bullet item that does
    not end in punctuation gets a ``;`` so that the items stay separable once joined.
    """
    parts: list[str] = []
    for raw in lines:
        line = raw.rstrip()
        m = _BULLET.match(line)
        if m:
            if parts and not re.search(r"[.,;:!?]$", parts[-1]):
                parts[-1] += ";"
            line = line[m.end() :]
        line = line.strip()
        if line:
            parts.append(line)
    return _WS.sub(" ", " ".join(parts)).strip()


def paragraphs(long_lines: Iterable[str]) -> list[list[str]]:
    """Split long-description lines at the "." separator lines."""
    out: list[list[str]] = [[]]
    for line in long_lines:
        if line.strip() == ".":
            out.append([])
        else:
            out[-1].append(line)
    return [p for p in out if any(x.strip() for x in p)]


def cap_words(text: str, limit: int = MAX_SOURCE_WORDS) -> str:
    """Cut ``text`` to at most ``limit`` words, at a sentence end when one falls in the second half."""
    words = text.split()
    if len(words) <= limit:
        return text
    for i in range(limit, limit // 2, -1):
        if _SENT_END.search(words[i - 1]):
            return " ".join(words[:i])
    return " ".join(words[:limit])


def clean_short(text: str) -> str:
    """Short description: whitespace collapsed, trailing period dropped (a headline, not a sentence)."""
    t = _WS.sub(" ", text).strip()
    return t[:-1].rstrip() if t.endswith(".") and not t.endswith("..") else t


# --- families and splits ---------------------------------------------------------------------------

_PREFIXES = (
    "python3-",
    "python-",
    "pypy3-",
    "pypy-",
    "ruby-",
    "node-",
    "golang-github-",
    "golang-gopkg-",
    "golang-",
    "r-cran-",
    "r-bioc-",
    "r-other-",
    "php-",
    "lua-",
    "ocaml-",
    "elpa-",
    "gir1.2-",
    "libjs-",
    "librust-",
    "libghc-",
    "libghc6-",
    "libocaml-",
    "libtest-",
    "lib",
    "fonts-",
    "gem-",
    "octave-",
    "haskell-",
    "texlive-",
    "ghc-",
    "rust-",
    "perl-",
    "tcl-",
    "xfonts-",
    "kde-",
    "qml-module-",
)
_SUFFIXES = (
    "-dev",
    "-doc",
    "-docs",
    "-dbg",
    "-dbgsym",
    "-data",
    "-common",
    "-bin",
    "-utils",
    "-tools",
    "-examples",
    "-perl",
    "-java",
    "-ocaml",
    "-cil",
    "-tests",
    "-test",
    "-plugins",
    "-plugin",
    "-prof",
    "-headers",
    "-static",
    "-runtime",
    "-source",
    "-src",
    "-all",
    "-udeb",
    "-core",
    "-client",
    "-server",
    "-daemon",
    "-gtk",
    "-qt",
    "-cli",
    "-html",
    "-api",
    "-ruby",
    "-python",
    "-lib",
    "-libs",
    "-extra",
    "-extras",
    "-modules",
    "-module",
    "-tcl",
    "-devel",
    "-demo",
    "-demos",
    "-private",
    "-shared",
)
_L10N = re.compile(r"-(?:l10n|i18n|help|locale|lang)(?:-.*)?$")
_VERSION = re.compile(r"(?:[-.+~_]?\d[\d.+~]*[a-z]?(?:t64|v5|c2|ldbl|gf)?)+$")


def package_family(name: str) -> str:
    """Group key for a binary package: ecosystem prefixes, role suffixes and version numbers removed.

    Why: packages built from one source (``libfoo2``, ``libfoo-dev``, ``foo-doc``, ``python3-foo``)
    share wording and often the first paragraph; they must stay on one side of a split. After the
    stripping only the first dash-separated word is kept, which also groups add-ons and template
    families (``apertium-spa-arg``, ``aspell-kk``, ``ceph-mds``) with their project. Examples:
    ``0ad-data-common`` -> ``0ad``, ``libqt5core5a`` -> ``qt5core``, ``python3-numpy-dbg`` -> ``numpy``,
    ``firefox-esr-l10n-fr`` -> ``firefox``. Stripping stops before the name would become empty.
    """
    stem = name.lower()
    stem = _L10N.sub("", stem) or stem
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if stem.startswith(p) and len(stem) > len(p) + 1:
                stem, changed = stem[len(p) :], True
        for s in _SUFFIXES:
            if stem.endswith(s) and len(stem) > len(s) + 1:
                stem, changed = stem[: -len(s)], True
        v = _VERSION.search(stem)
        if v and v.start() > 1:
            stem, changed = stem[: v.start()].rstrip("-._"), True
    head = stem.split("-", 1)[0]
    if len(head) >= 2:
        short = _VERSION.sub("", head)
        stem = short if len(short) >= 2 else head
    return stem


def split_of(family: str, test_per_10k: int = TEST_PER_10K, valid_per_10k: int = VALID_PER_10K) -> str:
    """Deterministic split from a salted SHA-256 of the family (stable across runs and machines)."""
    bucket = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}:{family}".encode()).digest()[:8], "big") % 10_000
    if bucket < test_per_10k:
        return "test"
    if bucket < test_per_10k + valid_per_10k:
        return "valid"
    return "train"


# --- building --------------------------------------------------------------------------------------


_TEMPLATE_SLOT = re.compile(r"\S*(?:\d|\w[-_+.:/]\w)\S*")
_NAME_PARTS = re.compile(r"[-.+_]")
_TOKEN = re.compile(r"\w+")


def template_key(text: str, package: str = "") -> str:
    """Dedup key of a first paragraph: lowercased, with names and numbers masked.

    Why: many paragraphs are one template filled in per package ("This package contains the source
    for the Rust bat crate", 474 crates; "... debug symbols for binutils-mips64-linux-gnuabi64").
    Tokens with digits or inner punctuation (versions, architectures, paths) and words of the
    package's own name become one slot, so such copies group together and count as one paragraph (or
    as boilerplate when the group is large).
    """
    parts = {w for w in _NAME_PARTS.split(package.lower()) if len(w) >= 2}
    parts |= {w[3:] for w in parts if w.startswith("lib") and len(w) >= 5}
    t = _TEMPLATE_SLOT.sub("§", text.lower())
    if parts:
        t = _TOKEN.sub(lambda m: "§" if m[0] in parts else m[0], t)
    return _WS.sub(" ", t).strip()


def _readme(meta: Mapping) -> str:
    c = meta["counts"]
    lines = [
        "# Debian package descriptions: first paragraph -> short description",
        "",
        "Built by `mass.data.summarization.build_debian` from apt's `Translation-en` index "
        f"({', '.join(s['name'] for s in meta['source']['files'])}). "
        "One example per line, UTF-8; `X.src` line i pairs with `X.tgt` line i.",
        "",
        "## Pairs",
        "",
        f"- source: the first paragraph of the long description (bullets unmarked, whitespace collapsed, cut to "
        f"{meta['params']['max_source_words']} words at a sentence end where possible); pairs whose source has "
        f"fewer than {meta['params']['min_source_words']} words are dropped",
        "- target: the one-line short description (trailing period dropped)",
        "- transitional/dummy packages are dropped (their text is boilerplate)",
        f"- a first paragraph shared by more than {meta['params']['max_shared']} packages is suite boilerplate and "
        "all its pairs are dropped; one shared by fewer keeps one pair (shortest package name, the family's "
        "main package), so every source line is unique",
        "- split by package family (prefixes `lib`, `python3-`, ..., suffixes `-dev`, `-doc`, ... and version "
        "numbers removed) with a salted SHA-256 hash, so no first paragraph is on two sides and no family of "
        f"at most {meta['params']['opening_max_link']} packages is (a larger family's link is ignored as too "
        "generic, like a common opening, so its members may be split)",
        "",
        "## Counts",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in c.items()]
    lines += ["", "## Licence", "", meta["licence"], ""]
    return "\n".join(lines)


LICENCE = (
    "Each description is part of its Debian package and is under that package's licence (see "
    "/usr/share/doc/<package>/copyright): overwhelmingly free-software licences (GPL, LGPL, MIT, BSD, "
    "Apache, ...), as Debian main requires, but not one uniform licence; a few may need attribution. "
    "Treat the corpus as a research sample of short, factual package descriptions."
)


OPENING_WORDS = 10
OPENING_MAX_LINK = 20

Row = tuple[str, str, str]


def _opening(text: str, package: str) -> str:
    return " ".join(template_key(text, package).split()[:OPENING_WORDS])


def _components(rows: list[Row], keys: Callable[[Row], list[tuple[str, str]]], max_link: int | None) -> list[list[Row]]:
    """Connected components of rows linked by shared keys (union-find), in first-row order.

    Keys held by more than ``max_link`` rows are ignored (too generic to mean "the same text").
    """
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    holders: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        for key in keys(row):
            holders[key].append(i)
    for members in holders.values():
        if max_link is not None and len(members) > max_link:
            continue
        root = find(members[0])
        for j in members[1:]:
            parent[find(j)] = root
    comps: dict[int, list[Row]] = defaultdict(list)
    for i, row in enumerate(rows):
        comps[find(i)].append(row)
    return list(comps.values())


def build_debian(out_dir: Path, source: Path | Iterable[Path] | None = None, *, compress: bool = False) -> dict:
    """Build the Debian summarization corpus in ``out_dir`` and return its metadata.

    ``source``: one or more Translation-en index files (plain, .xz, .gz, .bz2, or .lz4/.zst via
    apt-helper), or None to use every ``*_i18n_Translation-en*`` in /var/lib/apt/lists. Where a
    package appears in several indexes (bookworm and bookworm-security), the first file in sorted
    order wins. ``compress=True`` writes ``train.src.xz`` etc.

    Why first paragraph only: as in Gigaword (lead sentence -> headline), the lead states what the
    software is, which is what the short description says; later paragraphs mostly say how this binary
    package differs from its siblings (``This package contains the development files``), and cutting
    the whole text to N words would mix that in at random.
    """
    if source is None:
        paths = _find_indexes()
    else:
        paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
        paths = [p.expanduser() for p in paths]
        for p in paths:
            if not p.is_file():
                raise MassError(f"file not found ({APT_HINT} to fetch the index)", path=p)

    stats: Counter[str] = Counter()
    seen: set[str] = set()
    rows: list[Row] = []  # (package, source, target)
    for path in paths:
        for rec in parse_translation(_read_text(path)):
            pkg = str(rec["package"])
            stats["records"] += 1
            if pkg in seen:
                stats["dropped_duplicate_package"] += 1
                continue
            seen.add(pkg)
            target = clean_short(str(rec["short"]))
            paras = paragraphs(rec["long"])  # type: ignore[arg-type]
            src = cap_words(clean_paragraph(paras[0])) if paras else ""
            if not target:
                stats["dropped_empty_target"] += 1
            elif _TRANSITIONAL.search(target):
                stats["dropped_transitional"] += 1
            elif len(src.split()) < MIN_SOURCE_WORDS:
                stats["dropped_short_source"] += 1
            else:
                rows.append((pkg, src, target))
    if not rows:
        raise MassError("no usable descriptions in the index", path=paths[0])

    # 1. Paragraph groups: rows sharing the exact paragraph or its template are one paragraph.
    groups = _components(
        rows, lambda r: [("exact", _WS.sub(" ", r[1].lower())), ("tmpl", template_key(r[1], r[0]))], max_link=None
    )
    kept: list[tuple[str, str, str]] = []
    for group in groups:
        if len(group) > MAX_SHARED:
            stats["dropped_boilerplate_pairs"] += len(group)
            stats["boilerplate_paragraphs"] += 1
            continue
        stats["dropped_duplicate_paragraph"] += len(group) - 1
        kept.append(min(group, key=lambda r: (len(r[0]), r[0])))
    kept.sort(key=lambda r: r[0])

    # 2. Split units: same family, or same opening words (near-duplicate paragraphs such as
    # "JCal is a UNIX-cal-like tool ..." under jcal and libjalali0). Openings shared by many rows are
    # generic ("This package contains the development files for ...") and do not link.
    units = _components(
        kept, lambda r: [("family", package_family(r[0])), ("open", _opening(r[1], r[0]))], max_link=OPENING_MAX_LINK
    )
    splits: dict[str, list[tuple[str, str, str]]] = {"train": [], "valid": [], "test": []}
    for unit in units:
        name = min(package_family(r[0]) for r in unit)
        splits[split_of(name)].extend(unit)
    for items in splits.values():
        items.sort(key=lambda r: r[0])
    stats["split_units"] = len(units)
    stats["largest_split_unit"] = max(len(u) for u in units)

    texts: dict[str, list[str]] = {}
    for split, items in splits.items():
        texts[f"{split}.src"] = [s for _, s, _ in items]
        texts[f"{split}.tgt"] = [t for _, _, t in items]
        texts[f"{split}.pkg"] = [p for p, _, _ in items]

    meta = {
        "corpus": "debian",
        "task": "summarization (first paragraph of a package's long description -> its short description)",
        "source": {"files": [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in paths]},
        "params": {
            "min_source_words": MIN_SOURCE_WORDS,
            "max_source_words": MAX_SOURCE_WORDS,
            "max_shared": MAX_SHARED,
            "test_per_10k": TEST_PER_10K,
            "valid_per_10k": VALID_PER_10K,
            "split_salt": SPLIT_SALT,
            "opening_words": OPENING_WORDS,
            "opening_max_link": OPENING_MAX_LINK,
        },
        "counts": {**{k: len(v) for k, v in splits.items()}, **dict(sorted(stats.items()))},
        "lines": {name: len(lines) for name, lines in texts.items()},
        "licence": LICENCE,
    }
    write_corpus_dir(out_dir, texts, meta, _readme(meta), compress=compress)
    return meta
