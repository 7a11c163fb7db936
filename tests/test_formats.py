"""Tests for the external-format loaders (Gigaword line pairs, Cornell) and the pair writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mass.data.formats import read_cornell, read_line_pairs, write_corpus_dir, write_pairs
from mass.errors import MassError

SEP = " +++$+++ "


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_read_line_pairs_keeps_gigaword_placeholders(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.txt", "UNK shares rose ## percent on monday\n  second  article \n")
    tgt = _write(tmp_path / "t.txt", "shares up ## pct\nsecond title")  # no final newline
    assert list(read_line_pairs(src, tgt)) == [
        ("UNK shares rose ## percent on monday", "shares up ## pct"), ("second  article", "second title")]


def test_read_line_pairs_count_mismatch_names_both_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.txt", "x\ny\nz\n")
    tgt = _write(tmp_path / "t.txt", "x\ny\n")
    with pytest.raises(MassError) as err:
        list(read_line_pairs(src, tgt))
    msg = str(err.value)
    assert "a.txt has 3 lines" in msg and "t.txt has 2" in msg


def test_read_line_pairs_empty_line_and_bad_utf8(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.txt", "x\n \n")
    tgt = _write(tmp_path / "t.txt", "x\ny\n")
    with pytest.raises(MassError) as err:
        list(read_line_pairs(src, tgt))
    assert err.value.line == 2 and err.value.path == str(src)
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(MassError) as err:
        list(read_line_pairs(tgt, bad))
    assert err.value.line == 2 and err.value.path == str(bad) and "UTF-8" in str(err.value)


def _cornell(tmp_path: Path, conv_extra: str = "") -> tuple[Path, Path]:
    lines = "\n".join([
        f"L1045{SEP}u0{SEP}m0{SEP}BIANCA{SEP}They do not!",
        f"L1044{SEP}u2{SEP}m0{SEP}CAMERON{SEP}They do to!",
        f"L985{SEP}u0{SEP}m0{SEP}BIANCA{SEP}I hope so.",
        f"L984{SEP}u2{SEP}m0{SEP}CAMERON{SEP}She okay?",
        f"L900{SEP}u2{SEP}m0{SEP}CAMERON{SEP}",
        f"L901{SEP}u0{SEP}m0{SEP}BIANCA{SEP}Caf\xe9   au lait.",
    ]) + "\n"
    conv = "\n".join([
        f"u0{SEP}u2{SEP}m0{SEP}['L1044', 'L1045']",
        f"u0{SEP}u2{SEP}m0{SEP}['L984', 'L985', 'L900', 'L901']",
    ]) + "\n" + conv_extra
    return (_write(tmp_path / "movie_lines.txt", lines, "iso-8859-1"),
            _write(tmp_path / "movie_conversations.txt", conv, "iso-8859-1"))


def test_read_cornell_consecutive_pairs(tmp_path: Path) -> None:
    lines, conv = _cornell(tmp_path)
    assert list(read_cornell(lines, conv)) == [
        ("They do to!", "They do not!"), ("She okay?", "I hope so.")]  # pairs touching the empty L900 skipped


@pytest.mark.parametrize("extra", [f"u0{SEP}u2{SEP}m0{SEP}[L1, L2\n", f"u0{SEP}u2{SEP}['L1044']\n",
                                   f"u0{SEP}u2{SEP}m0{SEP}['L1044', 'L9999']\n"])
def test_read_cornell_malformed_conversation(tmp_path: Path, extra: str) -> None:
    lines, conv = _cornell(tmp_path, extra)
    with pytest.raises(MassError) as err:
        list(read_cornell(lines, conv))
    assert err.value.path == str(conv) and err.value.line == 3


def test_read_cornell_malformed_line(tmp_path: Path) -> None:
    lines = _write(tmp_path / "movie_lines.txt", f"L1{SEP}u0{SEP}m0{SEP}A{SEP}hi\nL2 u0 m0 broken\n")
    conv = _write(tmp_path / "movie_conversations.txt", f"u0{SEP}u2{SEP}m0{SEP}['L1']\n")
    with pytest.raises(MassError) as err:
        list(read_cornell(lines, conv))
    assert err.value.path == str(lines) and err.value.line == 2


def test_write_pairs_roundtrip_and_atomic(tmp_path: Path) -> None:
    prefix = tmp_path / "out" / "train"
    assert write_pairs([("a b", "c"), ("d", "e f")], prefix) == 2
    assert list(read_line_pairs(prefix.with_suffix(".src"), prefix.with_suffix(".tgt"))) == [("a b", "c"), ("d", "e f")]

    def bad():
        yield "x", "y"
        yield "two\nlines", "z"

    with pytest.raises(MassError, match="line break"):
        write_pairs(bad(), prefix)
    assert (tmp_path / "out" / "train.src").read_text() == "a b\nd\n"  # previous files untouched
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.src", "train.tgt"]


def test_write_corpus_dir_replaces_whole_dir(tmp_path: Path) -> None:
    out = tmp_path / "c"
    write_corpus_dir(out, {"train.src": ["a"], "train.tgt": ["b"]}, {"n": 1}, "readme", compress=True)
    assert json.loads((out / "meta.json").read_text()) == {"n": 1}
    with pytest.raises(MassError):
        write_corpus_dir(out, {"train.src": [""]}, {"n": 2}, "readme")
    assert (out / "train.src.xz").is_file() and json.loads((out / "meta.json").read_text()) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
