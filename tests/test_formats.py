"""Tests for the external-format loaders (Gigaword line pairs, Cornell) and the pair writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mass.data.formats import build_cornell, read_cornell, read_line_pairs, write_corpus_dir, write_pairs
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


def test_read_line_pairs_drops_a_byte_order_mark(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes("\ufeffune phrase\n".encode())  # as Notepad saves UTF-8
    tgt = _write(tmp_path / "t.txt", "a sentence\n")
    assert list(read_line_pairs(src, tgt)) == [("une phrase", "a sentence")]


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


def test_read_cornell_carriage_return_inside_a_line(tmp_path: Path) -> None:
    # Lines end at "\n" only: a stray "\r" inside an utterance neither splits it nor shifts later line numbers.
    lines = _write(tmp_path / "movie_lines.txt",
                   f"L1{SEP}u0{SEP}m0{SEP}A{SEP}hi\rthere\r\nL2{SEP}u2{SEP}m0{SEP}B{SEP}yes\r\nL3 broken\n")
    conv = _write(tmp_path / "movie_conversations.txt", f"u0{SEP}u2{SEP}m0{SEP}['L1', 'L2']\n")
    with pytest.raises(MassError) as err:
        list(read_cornell(lines, conv))
    assert err.value.line == 3
    lines.write_bytes(lines.read_bytes().replace(b"L3 broken\n", b""))
    assert list(read_cornell(lines, conv)) == [("hi there", "yes")]


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


def test_write_corpus_dir_never_replaces_other_files(tmp_path: Path) -> None:
    """`mass data cornell --out` pointed at the release itself, or at a file, must not delete it."""
    release = _cornell_movies(tmp_path / "release", 3)
    note = tmp_path / "note.txt"
    note.write_text("keep me", encoding="utf-8")
    for out in (release, note):
        with pytest.raises(MassError, match="not a corpus directory"):
            write_corpus_dir(out, {"train.src": ["a"]}, {"n": 1}, "readme")
    assert (release / "movie_lines.txt").is_file() and note.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "release"]
    with pytest.raises(MassError, match="cannot create the output directory") as info:
        write_corpus_dir(note / "sub", {"train.src": ["a"]}, {"n": 1}, "readme")  # its parent is a file
    assert "\n" not in str(info.value)


def _cornell_movies(root: Path, movies: int) -> Path:
    """A release directory with `movies` movies of one three-utterance conversation each (two pairs)."""
    root.mkdir(parents=True, exist_ok=True)
    lines, convs = [], []
    for m in range(movies):
        ids = [f"L{m}x{k}" for k in range(3)]
        words = [f"hello from movie {m}", f"reply in movie {m}", f"last word {m}"]
        lines += [f"{i}{SEP}u{k % 2}{SEP}m{m}{SEP}N{SEP}{w}" for k, (i, w) in enumerate(zip(ids, words, strict=True))]
        convs.append(f"u0{SEP}u1{SEP}m{m}{SEP}{ids!r}")
    _write(root / "movie_lines.txt", "\n".join(lines) + "\n", "iso-8859-1")
    _write(root / "movie_conversations.txt", "\n".join(convs) + "\n", "iso-8859-1")
    return root


def test_build_cornell_splits_by_movie(tmp_path: Path) -> None:
    source = _cornell_movies(tmp_path / "release", 25)
    meta = build_cornell(source, tmp_path / "out")
    out = tmp_path / "out"
    read = {name: (out / name).read_text(encoding="utf-8").splitlines() for name in ("test.src", "test.tgt")}
    assert read["test.src"] == ["hello from movie 0", "reply in movie 0", "hello from movie 20", "reply in movie 20"]
    assert read["test.tgt"] == ["reply in movie 0", "last word 0", "reply in movie 20", "last word 20"]
    movies = {}
    for split in ("train", "valid", "test"):
        for line in (out / f"{split}.src").read_text(encoding="utf-8").splitlines():
            movies.setdefault(line.split()[-1], set()).add(split)
    assert len(movies) == 25 and all(len(splits) == 1 for splits in movies.values())  # no movie in two splits
    assert {m for m, s in movies.items() if s == {"valid"}} == {"1", "21"}
    assert meta["pairs"] == {"train": 42, "valid": 4, "test": 4} == json.loads((out / "meta.json").read_text())["pairs"]
    build_cornell(source, tmp_path / "again")
    assert all((out / n).read_bytes() == (tmp_path / "again" / n).read_bytes() for n in ("train.src", "valid.tgt"))


def test_build_cornell_too_few_movies_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(MassError, match="empty split"):
        build_cornell(_cornell_movies(tmp_path / "release", 2), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mass_data_cornell_then_prepare(tmp_path: Path, capsys) -> None:
    """The README's dialogue route: the release -> line files -> a prepared src/tgt data directory."""
    from mass.cli import main

    source, out = _cornell_movies(tmp_path / "release", 25), tmp_path / "cornell"
    assert main(["data", "cornell", "--source", str(source), "--out", str(out)]) == 0
    assert "from 25 movies" in capsys.readouterr().out
    argv = ["prepare", "--langs", "src,tgt", "--train", str(out / "train"), "--valid", str(out / "valid")]
    assert main([*argv, "--out", str(tmp_path / "bin"), "--parallel", "--vocab-size", "60"]) == 0
    from mass.data.binarize import load_data_dir

    data = load_data_dir(tmp_path / "bin")
    assert len(data.array("train", "src")) == len(data.array("train", "tgt")) == 42
    assert main(["data", "cornell", "--out", str(tmp_path / "x")]) == 1
    assert "--source DIR is needed" in capsys.readouterr().err
