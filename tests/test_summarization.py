"""Tests for the Debian description builder (synthetic Translation-en index) and the shipped corpus."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from mass.data import summarization as summ
from mass.data.formats import embedded_dir, export_embedded, read_embedded
from mass.errors import MassError

BOILER = "Frobnicate is a cross-platform framework for frobbing widgets of many kinds quickly."


ADJ = ("zesty", "brave", "calm", "dark", "eager", "fair", "gentle", "happy", "icy", "jolly", "keen", "lucky",
       "mighty", "noble", "odd", "proud", "quick", "rusty", "shy", "tidy")
NOUN = ("falcon", "badger", "otter", "heron", "lynx", "marten", "newt", "osprey", "panda", "quail", "raven",
        "stoat", "tapir", "urchin", "vole", "walrus", "yak", "zebra", "bison", "camel")


def _record(pkg: str, short: str, *paras: list[str]) -> str:
    body = "\n .\n".join("\n".join(" " + line for line in p) for p in paras)
    return f"Package: {pkg}\nDescription-md5: 0123\nDescription-en: {short}\n{body}\n\n"


def _index() -> str:
    recs = [
        _record("0ad", "Real-time strategy game of ancient warfare",
                ["0 A.D. is a free, open-source real-time", "strategy game of ancient warfare."]),
        _record("0ad-data", "Real-time strategy game of ancient warfare (data files)",
                ["0 A.D. is a free, open-source real-time", "strategy game of ancient warfare."],
                ["This package contains the main data files."]),
        _record("tool", "Handy tool.",
                ["Tool does things:", "  * reads files", "  * writes   files", "  - counts words"],
                ["Second paragraph is ignored entirely here."]),
        _record("tiny", "Too short source", ["Only four words here."]),
        _record("oldthing", "transitional package", ["This is a transitional package and can be removed safely."]),
    ]
    recs += [_record(f"frob-mod{i}", f"Frobnicate module {i}", [BOILER], [f"This is module {i}."]) for i in range(6)]
    recs += [_record(f"lib{n}-dev", f"development files for {n}", [f"Library {n} parses {n} documents for you fast."])
             for n in ("alpha", "beta")]
    # Many families, two binaries each, for the split checks (distinct words: numbers would be masked
    # by the template key and make all of them one boilerplate paragraph).
    for a in ADJ:
        for n in NOUN:
            recs.append(_record(f"{a}{n}", f"sorts {a} {n} records",
                                [f"{a.title()} {n} is a tool that sorts {n} records in {a} order."]))
            recs.append(_record(f"lib{a}{n}-doc", f"documentation for {a} {n}",
                                [f"Manual of the {a} {n} sorter, in HTML, for {n} keepers."]))
    return "".join(recs)


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, dict]:
    src = tmp_path / "Translation-en.xz"
    src.write_bytes(lzma.compress(_index().encode()))
    out = tmp_path / "debian"
    return out, summ.build_debian(out, src)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_cleaning_dedup_and_boilerplate(built: tuple[Path, dict]) -> None:
    out, meta = built
    pairs = {}
    for split in ("train", "valid", "test"):
        for p, s, t in zip(_lines(out / f"{split}.pkg"), _lines(out / f"{split}.src"), _lines(out / f"{split}.tgt"),
                           strict=True):
            pairs[p] = (s, t)
    # Shared first paragraph (same family): one pair kept, from the shortest package name.
    assert pairs["0ad"] == ("0 A.D. is a free, open-source real-time strategy game of ancient warfare.",
                            "Real-time strategy game of ancient warfare")
    assert "0ad-data" not in pairs
    # First paragraph only, bullets unmarked, whitespace collapsed, trailing period of the target dropped.
    assert pairs["tool"] == ("Tool does things: reads files; writes files; counts words", "Handy tool")
    # Boilerplate shared by more than MAX_SHARED packages: all dropped; short source and transitional dropped.
    assert not any(p.startswith("frob-") for p in pairs) and "tiny" not in pairs and "oldthing" not in pairs
    c = meta["counts"]
    assert c["dropped_boilerplate_pairs"] == 6 and c["dropped_short_source"] == 1 and c["dropped_transitional"] == 1
    # libalpha-dev and libbeta-dev share one template once their names are masked: one pair kept.
    assert ("libalpha-dev" in pairs) != ("libbeta-dev" in pairs)
    assert c["train"] + c["valid"] + c["test"] == len(pairs) == 1 + 1 + 1 + 800
    for split in ("train", "valid", "test"):
        assert meta["lines"][f"{split}.src"] == meta["lines"][f"{split}.tgt"] == c[split]
    assert c["valid"] > 0 and c["test"] > 0
    assert (out / "README.md").is_file() and json.loads((out / "meta.json").read_text())["counts"] == c


def test_no_family_or_paragraph_across_splits(built: tuple[Path, dict]) -> None:
    out, _ = built
    fams = {s: {summ.package_family(p) for p in _lines(out / f"{s}.pkg")} for s in ("train", "valid", "test")}
    srcs = {s: set(_lines(out / f"{s}.src")) for s in ("train", "valid", "test")}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not fams[a] & fams[b]
        assert not srcs[a] & srcs[b]
    n = sum(len(_lines(out / f"{s}.src")) for s in srcs)
    assert n == len(set().union(*srcs.values()))  # every source line unique


def test_deterministic(tmp_path: Path, built: tuple[Path, dict]) -> None:
    out, meta = built
    src = tmp_path / "plain"
    src.write_text(_index())
    meta2 = summ.build_debian(tmp_path / "again", src)
    assert meta2["counts"] == meta["counts"]
    assert (tmp_path / "again" / "test.src").read_bytes() == (out / "test.src").read_bytes()


def test_package_family() -> None:
    f = summ.package_family
    assert f("0ad-data-common") == f("0ad") == "0ad"
    assert f("libfoo2") == f("libfoo-dev") == f("foo-doc") == f("python3-foo") == f("libfoo-perl") == "foo"
    assert f("firefox-esr-l10n-fr") == "firefox"
    assert f("2048") == "2048"


def test_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MassError, match="apt-get update"):
        summ.build_debian(tmp_path / "o", tmp_path / "nope")
    monkeypatch.setattr(summ, "APT_LISTS", tmp_path)
    with pytest.raises(MassError, match="Acquire::Languages=en"):
        summ.build_debian(tmp_path / "o")


# --- the shipped corpus ----------------------------------------------------------------------------


def test_shipped_debian_corpus(tmp_path: Path) -> None:
    d = embedded_dir("debian")
    meta = json.loads((d / "meta.json").read_text())
    data = {(s, side): read_embedded("debian", s, side) for s in ("train", "valid", "test") for side in ("src", "tgt")}
    for (s, side), lines in data.items():
        assert len(lines) == meta["lines"][f"{s}.{side}"] == meta["counts"][s]
        assert all(x.strip() and x == x.strip() for x in lines)
    assert 1000 <= meta["counts"]["valid"] <= 2000 and 1000 <= meta["counts"]["test"] <= 2000
    train = set(data["train", "src"])
    assert not train & set(data["test", "src"]) and not train & set(data["valid", "src"])
    assert sum(p.stat().st_size for p in d.iterdir()) < 4_000_000
    out = export_embedded("debian", tmp_path / "plain")
    assert _lines(out / "test.tgt") == data["test", "tgt"]
