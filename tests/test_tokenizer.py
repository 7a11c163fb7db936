import random
from pathlib import Path

import pytest

from mass.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    _sample_lines,
    smoothed_quotas,
    train_tokenizer,
)
from mass.errors import MassError

EN = "the quick brown fox jumps over a lazy dog while cats sleep under the warm sun and birds sing".split()
FR = "le café était très agréable près de la fenêtre où les élèves lisaient déjà un livre à côté".split()


def write_corpus(path: Path, words: list[str], n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = [
        " ".join(rng.choices(words, k=rng.randint(3, 14))).capitalize() + rng.choice(".!?,;")
        for _ in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("corpus")
    return [write_corpus(d / "en.txt", EN, 300, 1), write_corpus(d / "fr.txt", FR, 300, 2)]


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory) -> Tokenizer:
    return train_tokenizer(corpus, tmp_path_factory.mktemp("spm") / "spm", 250)


def test_special_ids_are_fixed(tok):
    pieces = [tok.id_to_piece(i) for i in range(NUM_SPECIAL)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID) == (0, 1, 2, 3, 4)
    assert tok.piece_to_id("<mask>") == MASK_ID
    assert NUM_SPECIAL < tok.vocab_size <= 250


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over a lazy dog.",
        "Le café était très agréable, près de la fenêtre !",
        "Les élèves lisaient déjà un livre à côté; the cats sleep?",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert UNK_ID not in ids
    assert tok.decode(ids) == text


def test_batch_matches_single(tok):
    texts = ["Le café était très agréable.", "The lazy dog sleeps!", "À côté de la fenêtre?"]
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.decode_batch(batch) == texts
    assert tok.encode_batch([]) == [] and tok.decode_batch([]) == []


def test_mask_never_produced_and_specials_dropped_by_decode(tok):
    ids = tok.encode("The <mask> fox and <s> </s> <pad> café.")
    assert not set(ids) & {PAD_ID, BOS_ID, EOS_ID, MASK_ID}
    text = "The lazy dog."
    ids = tok.encode(text)
    assert tok.decode([BOS_ID, *ids, MASK_ID, EOS_ID, PAD_ID, PAD_ID]) == text


def test_training_is_deterministic(corpus, tmp_path):
    a = train_tokenizer(corpus, tmp_path / "a", 250)
    b = train_tokenizer(corpus, tmp_path / "b", 250)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert (tmp_path / "a.vocab").read_text(encoding="utf-8") == (tmp_path / "b.vocab").read_text(
        encoding="utf-8"
    )
    assert a.vocab_size == b.vocab_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "a.vocab", "b.model", "b.vocab"]


def test_sampling_caps_lines_and_is_seeded(corpus, tmp_path):
    a = train_tokenizer(corpus, tmp_path / "a", 200, max_sentences=150, seed=3)
    train_tokenizer(corpus, tmp_path / "b", 200, max_sentences=150, seed=3)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.decode(a.encode("The lazy dog.")) == "The lazy dog."


def test_missing_or_corrupt_model(tmp_path):
    with pytest.raises(MassError, match="not found") as err:
        Tokenizer(tmp_path / "nope.model")
    assert "nope.model" in str(err.value)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(MassError, match="not a valid SentencePiece model") as err:
        Tokenizer(bad)
    assert "bad.model" in str(err.value)


def test_training_input_errors(corpus, tmp_path):
    with pytest.raises(MassError, match="not found"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "x", 100)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(MassError, match="no non-empty lines"):
        train_tokenizer([empty], tmp_path / "x", 100)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(MassError, match="invalid UTF-8") as err:
        train_tokenizer([*corpus, bad], tmp_path / "x", 100)
    assert str(err.value).startswith(f"{bad}:2: ")
    assert not list(tmp_path.glob("x*")) and not list(tmp_path.glob(".*"))


def test_smoothed_quotas_favour_the_smaller_language_and_respect_counts():
    assert smoothed_quotas([9000, 1000], 2000) == pytest.approx([1500, 500])  # sqrt shares 3:1, not 9:1
    assert smoothed_quotas([100, 1_000_000], 100_000) == pytest.approx([100, 99_900])  # a full group gives way
    assert smoothed_quotas([10, 20], 100) == [10, 20]  # a sample larger than the text: all of it
    assert smoothed_quotas([0, 50], 10) == pytest.approx([0, 10])


def test_sample_is_language_balanced_and_keeps_everything_when_small(tmp_path):
    big = write_corpus(tmp_path / "en.txt", EN, 9000, 1)
    small = write_corpus(tmp_path / "fr.txt", FR, 1000, 2)
    french = set(small.read_text(encoding="utf-8").splitlines())
    sample = _sample_lines([big, small], 2000, seed=0)
    assert 1880 < len(sample) < 2120
    assert 430 < sum(line in french for line in sample) < 570  # about 500, where a plain sample gives 200
    everything = _sample_lines([big, small], 10_000, seed=0)
    assert everything == big.read_text(encoding="utf-8").splitlines() + small.read_text(encoding="utf-8").splitlines()
