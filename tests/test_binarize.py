import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from mass.data.binarize import (
    TokenArray,
    binarize,
    check_parallel,
    count_lines,
    load_data_dir,
    prepare_dir,
    token_dtype,
)
from mass.data.tokenizer import train_tokenizer
from mass.errors import MassError

WORDS = (
    "the quick brown fox jumps over a lazy dog while cats sleep under warm sun "
    "le café était très agréable près de la fenêtre où les élèves lisaient déjà un livre à côté"
).split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(WORDS, k=rng.randint(1, 12))).capitalize() + rng.choice(".!?") for _ in range(n)
    ]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return train_tokenizer(
        [write_lines(d / "all.txt", sentences(400, 0))], d / "spm", 200, character_coverage=1.0
    )


def test_round_trip_and_offsets(tok, tmp_path):
    lines = sentences(57, 1)
    n = binarize(write_lines(tmp_path / "c.txt", lines), tok, tmp_path / "out" / "c", chunk_lines=10)
    assert n == len(lines)
    arr = TokenArray(tmp_path / "out" / "c")
    assert len(arr) == n and arr.dtype == np.uint16
    encoded = [tok.encode(line) for line in lines]
    assert [tok.decode(arr[i]) for i in range(n)] == lines
    assert all(arr[i].dtype == np.int64 and arr[i].tolist() == encoded[i] for i in range(n))
    assert arr.lengths.dtype == np.int64 and arr.lengths.tolist() == [len(e) for e in encoded]
    assert arr.num_tokens == sum(map(len, encoded))
    idx = np.load(tmp_path / "out" / "c.idx")
    assert idx.dtype == np.int64 and idx[0] == 0 and len(idx) == n + 1
    assert np.array_equal(np.diff(idx), arr.lengths)
    assert (tmp_path / "out" / "c.bin").stat().st_size == 2 * arr.num_tokens
    assert arr[-1].tolist() == encoded[-1]
    with pytest.raises(IndexError):
        arr[n]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c.bin", "c.idx"]


def test_crlf_and_missing_final_newline(tok, tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes("Le café.\r\nThe dog!".encode())
    assert binarize(path, tok, tmp_path / "w") == 2
    arr = TokenArray(tmp_path / "w")
    assert [tok.decode(arr[i]) for i in range(2)] == ["Le café.", "The dog!"]
    path.write_bytes("\ufeffLe café.\nThe dog!\n".encode())  # a byte-order mark is not part of the text
    binarize(path, tok, tmp_path / "bom")
    assert TokenArray(tmp_path / "bom")[0].tolist() == arr[0].tolist()


def test_pickle_reopens_instead_of_copying(tok, tmp_path):
    binarize(write_lines(tmp_path / "c.txt", sentences(5, 2)), tok, tmp_path / "c")
    arr = TokenArray(tmp_path / "c")
    state = pickle.dumps(arr)
    assert len(state) < 200
    assert pickle.loads(state)[3].tolist() == arr[3].tolist()


def test_dtype_choice():
    assert token_dtype(200) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.int32


def _bad_input_cases():
    good = "The dog sleeps."
    return {
        "empty_line": ([good, good, "", good], 3, "empty line"),
        "blank_line": ([good, "   ", good], 2, "empty line"),
        "too_long": ([good] * 12 + ["x" * 81], 13, "line has 81 characters, more than max_line_chars=80"),
    }


@pytest.mark.parametrize("case", ["empty_line", "blank_line", "too_long"])
def test_bad_lines_give_file_and_line(tok, tmp_path, case):
    lines, lineno, message = _bad_input_cases()[case]
    path = write_lines(tmp_path / "bad.txt", lines)
    with pytest.raises(MassError, match=message) as err:
        binarize(path, tok, tmp_path / "out", max_line_chars=80, chunk_lines=5)
    assert str(err.value).startswith(f"{path}:{lineno}: ")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]


def test_invalid_utf8(tok, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"The dog.\nLe caf\xc3.\nOk.\n")
    with pytest.raises(MassError, match="invalid UTF-8") as err:
        binarize(path, tok, tmp_path / "out")
    assert str(err.value).startswith(f"{path}:2: ")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.txt"]


def test_missing_and_empty_file(tok, tmp_path):
    with pytest.raises(MassError, match="not found") as err:
        binarize(tmp_path / "nope.txt", tok, tmp_path / "out")
    assert "nope.txt" in str(err.value)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(MassError, match="file is empty") as err:
        binarize(empty, tok, tmp_path / "out")
    assert "empty.txt" in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["empty.txt"]


def test_failure_keeps_previous_output(tok, tmp_path):
    binarize(write_lines(tmp_path / "good.txt", sentences(4, 3)), tok, tmp_path / "c")
    before = (tmp_path / "c.bin").read_bytes()
    with pytest.raises(MassError):
        binarize(write_lines(tmp_path / "bad.txt", ["ok.", ""]), tok, tmp_path / "c")
    assert (tmp_path / "c.bin").read_bytes() == before and len(TokenArray(tmp_path / "c")) == 4


def test_token_array_errors(tok, tmp_path):
    with pytest.raises(MassError, match="not found"):
        TokenArray(tmp_path / "none")
    binarize(write_lines(tmp_path / "c.txt", sentences(6, 4)), tok, tmp_path / "c")
    with open(tmp_path / "c.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(MassError, match="does not match") as err:
        TokenArray(tmp_path / "c")
    assert "c.bin" in str(err.value)
    (tmp_path / "c.idx").write_bytes(b"garbage")
    with pytest.raises(MassError, match="not a valid index file") as err:
        TokenArray(tmp_path / "c")
    assert "pickle" not in str(err.value)  # numpy's advice to unpickle an untrusted file is not passed on


def test_count_lines_and_check_parallel(tmp_path):
    a = write_lines(tmp_path / "a.txt", ["x", "y", "z"])
    b = tmp_path / "b.txt"
    b.write_bytes(b"x\ny\nz")
    c = write_lines(tmp_path / "c.txt", ["x", "y"])
    assert count_lines(a) == count_lines(b) == 3 and check_parallel(a, b) == 3
    with pytest.raises(MassError) as err:
        check_parallel(a, c)
    assert "a.txt has 3 lines" in str(err.value) and "c.txt has 2" in str(err.value)


def test_prepare_dir_layout_and_meta(tok, tmp_path):
    en, fr = sentences(20, 5), sentences(20, 6)
    inputs = {
        "train": {"en": write_lines(tmp_path / "tr.en", en), "fr": write_lines(tmp_path / "tr.fr", fr)},
        "unsup": {"en": write_lines(tmp_path / "mono.en", sentences(7, 7))},
        "test": {"fr": write_lines(tmp_path / "te.fr", ["Des  espaces ,  gardés !"])},
    }
    out = prepare_dir(tmp_path / "data", tok.path, inputs, parallel_splits={"train", "valid"})
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["meta.json", "spm.model", "text"]
        + [f"{s}.{ext}" for s in ("train.en", "train.fr", "unsup.en", "test.fr") for ext in ("bin", "idx")]
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {
        "langs": ["en", "fr"],
        "vocab_size": tok.vocab_size,
        "splits": {"train": {"en": 20, "fr": 20}, "unsup": {"en": 7}, "test": {"fr": 1}},
    }
    # Held-out text is kept byte for byte (references are scored as written); training text is not copied.
    assert [p.name for p in (out / "text").iterdir()] == ["test.fr"]
    assert load_data_dir(out).text("test", "fr").read_bytes() == inputs["test"]["fr"].read_bytes()
    with pytest.raises(MassError, match="no text kept for split 'train' language 'en'"):
        load_data_dir(out).text("train", "en")
    data = load_data_dir(out)
    assert data.langs == ["en", "fr"] and data.vocab_size == tok.vocab_size
    assert data.has("train", "fr") and not data.has("unsup", "fr") and not data.has("test", "en")
    assert data.tokenizer().decode(data.array("train", "fr")[4]) == fr[4]
    with pytest.raises(MassError, match="no data for split 'unsup' language 'fr'"):
        data.array("unsup", "fr")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    with pytest.raises(MassError, match="already exists"):
        prepare_dir(out, tok.path, inputs)
    prepare_dir(out, tok.path, {"train": inputs["train"]}, overwrite=True)
    assert load_data_dir(out).splits == {"train": {"en": 20, "fr": 20}}


def test_prepare_dir_failures_leave_nothing(tok, tmp_path):
    good = write_lines(tmp_path / "a.en", sentences(5, 8))
    short = write_lines(tmp_path / "a.fr", sentences(4, 9))
    bad = write_lines(tmp_path / "b.fr", ["Un.", "", "Deux."])
    files_before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(MassError, match="differ in length"):
        prepare_dir(
            tmp_path / "data", tok.path, {"train": {"en": good, "fr": short}}, parallel_splits={"train"}
        )
    with pytest.raises(MassError, match="empty line") as err:
        prepare_dir(tmp_path / "data", tok.path, {"train": {"en": good}, "valid": {"fr": bad}})
    assert str(err.value).startswith(f"{bad}:2: ")
    with pytest.raises(MassError, match="invalid split or language name"):
        prepare_dir(tmp_path / "data", tok.path, {"train": {"e.n": good}})
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before


def test_prepare_dir_overwrites_only_a_data_directory(tok, tmp_path):
    """--overwrite replaces an earlier data directory, never a folder of the user's files (its own input
    included) or a file; an output that cannot be created is one line."""
    texts = tmp_path / "texts"
    texts.mkdir()
    inputs = {"train": {"en": write_lines(texts / "train.en", sentences(5, 1))}}
    note = write_lines(tmp_path / "note.txt", ["keep me"])
    (tmp_path / "other").mkdir()
    write_lines(tmp_path / "other" / "x.txt", ["keep me too"])
    with pytest.raises(MassError, match="inside the output directory"):
        prepare_dir(texts, tok.path, inputs, overwrite=True)
    for out in (note, tmp_path / "other"):
        with pytest.raises(MassError, match="not a prepared data directory"):
            prepare_dir(out, tok.path, inputs, overwrite=True)
    with pytest.raises(MassError, match="cannot create the output directory") as info:
        prepare_dir(note / "data", tok.path, inputs)
    assert "\n" not in str(info.value)
    assert (texts / "train.en").is_file() and note.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt", "other", "texts"]
    (tmp_path / "empty").mkdir()
    assert load_data_dir(prepare_dir(tmp_path / "empty", tok.path, inputs, overwrite=True)).splits == {
        "train": {"en": 5}
    }


def test_prepared_files_follow_the_umask(tok, tmp_path):
    """Shared data stays readable by others: not the 0700/0600 of mkdtemp/mkstemp."""
    import os

    old = os.umask(0o022)
    try:
        out = prepare_dir(tmp_path / "data", tok.path, {"train": {"en": write_lines(tmp_path / "a.en", ["Un."])}})
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.glob("train.*")}
    assert modes == {"train.en.bin": 0o644, "train.en.idx": 0o644}


def test_load_data_dir_errors(tmp_path):
    with pytest.raises(MassError, match="meta.json missing"):
        load_data_dir(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(MassError, match="invalid meta.json"):
        load_data_dir(tmp_path)
