"""On-the-fly back-translation (`back_translate`: what the batch holds, that generation is gradient-free and
dropout-free, that the model's mode survives) and the objective schedule (`every`), both on their own and
through `train()` with a `bt` objective on an `unsup` split."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from helpers import read_log, synthetic_pairs, tiny_config, write_lines

from mass.batch import seq2seq_batch
from mass.data.binarize import prepare_dir
from mass.data.tokenizer import BOS_ID, EOS_ID, NEVER_GENERATED, NUM_SPECIAL, PAD_ID, train_tokenizer
from mass.model import MassModel, tiny
from mass.objectives import back_translate, seq2seq_loss
from mass.train import Objective, train

VOCAB = 30
EN, FR = 0, 1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """Drawing curves.png costs about a second per run and is not what these tests check."""
    monkeypatch.setattr("mass.plots.plot_metrics", lambda log_path, out: None)


def build(seed: int = 0, dropout: float = 0.0, std: float = 0.1, max_positions: int = 256) -> MassModel:
    """A tiny en/fr model; its matrices are redrawn wider than the default so its outputs depend on the input."""
    cfg = tiny()
    cfg.vocab_size, cfg.num_langs, cfg.max_positions = VOCAB, 2, max_positions
    cfg.dropout = cfg.attention_dropout = dropout
    torch.manual_seed(seed)
    model = MassModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model


def sentences_of(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(NUM_SPECIAL, VOCAB) for _ in range(n)] for n in lengths]


@torch.no_grad()
def reference_translation(
    model: MassModel, sentence: list[int], lang: int, via_lang: int, banned: tuple[int, ...] = ()
) -> list[int]:
    """Greedy translation of one sentence by full forward passes (no cache, no search code), in eval mode:
    EOS is not allowed first (at least one token), PAD/BOS/MASK and `banned` never, and at most
    int(1.3 * len + 5) tokens are generated."""
    was_training = model.training
    model.eval()
    src = torch.tensor([sentence + [EOS_ID]])
    out: list[int] = []
    for _ in range(int(1.3 * len(sentence) + 5)):
        dec = torch.tensor([[BOS_ID] + out])
        logits = model(src, torch.tensor([lang]), dec, torch.arange(dec.size(1))[None], torch.tensor([via_lang]))
        scores = logits[0, -1]
        scores[list(NEVER_GENERATED) + list(banned)] = -math.inf
        if not out:
            scores[EOS_ID] = -math.inf
        token = int(scores.argmax())
        if token == EOS_ID:
            break
        out.append(token)
    model.train(was_training)
    return out


def rows(tensor: torch.Tensor) -> list[list[int]]:
    """The rows of a right-padded token tensor, without their padding."""
    return [[t for t in row if t != PAD_ID] for row in tensor.tolist()]


# --- back_translate --------------------------------------------------------------------------------------


def test_batch_recovers_the_sentences_from_their_greedy_translation():
    model = build().train()
    sentences = sentences_of([5, 2, 8, 3, 6])
    batch = back_translate(model, sentences, lang=EN, via_lang=FR)

    translations = [reference_translation(model, s, EN, FR) for s in sentences]
    assert len({tuple(t) for t in translations}) > 1  # the model's outputs depend on its input
    assert rows(batch.src_tokens) == [t + [EOS_ID] for t in translations]
    assert rows(batch.target) == [s + [EOS_ID] for s in sentences]
    assert rows(batch.dec_tokens) == [[BOS_ID] + s for s in sentences]
    assert batch.src_lang.tolist() == [FR] * 5 and batch.tgt_lang.tolist() == [EN] * 5
    assert torch.equal(batch.memory_mask, batch.src_tokens != PAD_ID)
    assert torch.equal(batch.dec_positions, torch.arange(batch.dec_tokens.size(1)).expand_as(batch.dec_tokens))
    assert batch.num_target_tokens == sum(len(s) + 1 for s in sentences)

    # Generation happened without autograd: no graph in the batch, no gradient left on the model.
    for name in ("src_tokens", "memory_mask", "dec_tokens", "dec_positions", "target"):
        assert not getattr(batch, name).requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert model.training


def test_other_direction_uses_the_other_language_embeddings():
    model = build().eval()
    sentences = sentences_of([4, 7, 3], seed=1)
    batch = back_translate(model, sentences, lang=FR, via_lang=EN)
    assert batch.src_lang.tolist() == [EN] * 3 and batch.tgt_lang.tolist() == [FR] * 3
    assert rows(batch.src_tokens) == [reference_translation(model, s, FR, EN) + [EOS_ID] for s in sentences]
    assert not model.training  # an eval model stays in eval mode


def test_generation_is_dropout_free_and_the_training_mode_is_restored():
    model = build(dropout=0.3).train()
    sentences = sentences_of([6, 4, 9, 5], seed=2)
    first = back_translate(model, sentences, EN, FR)
    second = back_translate(model, sentences, EN, FR)
    assert torch.equal(first.src_tokens, second.src_tokens)
    assert rows(first.src_tokens) == [reference_translation(model, s, EN, FR) + [EOS_ID] for s in sentences]
    assert model.training and all(m.training for m in model.modules())
    # Training on the batch does use dropout again: two losses of the same batch differ.
    losses = [seq2seq_loss(model, first)[1]["nll"] for _ in range(2)]
    assert losses[0] != losses[1]


def test_gradients_flow_only_through_the_reconstruction():
    model = build(seed=4).train()
    sentences = sentences_of([5, 3, 7, 4], seed=3)
    translations = [reference_translation(model, s, EN, FR) for s in sentences]

    loss, _ = seq2seq_loss(model, back_translate(model, sentences, EN, FR))
    loss.backward()
    bt_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    by_hand, _ = seq2seq_loss(model, seq2seq_batch(translations, sentences, FR, EN))
    by_hand.backward()
    hand_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert bt_grads.keys() == hand_grads.keys()
    assert "embed.tokens.weight" in bt_grads and "encoder_layers.0.self_attn.q_proj.weight" in bt_grads
    for name, grad in bt_grads.items():
        torch.testing.assert_close(grad, hand_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_banned_subwords_never_appear_in_the_translation():
    """`restrict_vocab`'s mechanism: the greedy search picks the best subword that is not banned."""
    model = build(seed=5).eval()
    sentences = sentences_of([6, 3, 8, 5], seed=4)
    free = [reference_translation(model, s, EN, FR) for s in sentences]
    banned = tuple(sorted({t for sentence in free for t in sentence[:2]}))  # the first tokens chosen freely
    mask = torch.zeros(VOCAB, dtype=torch.bool)
    mask[list(banned)] = True

    batch = back_translate(model, sentences, EN, FR, banned=mask)
    translations = rows(batch.src_tokens)
    assert translations == [reference_translation(model, s, EN, FR, banned) + [EOS_ID] for s in sentences]
    assert not {t for row in translations for t in row} & set(banned)
    assert translations != [t + [EOS_ID] for t in free]
    assert rows(batch.target) == [s + [EOS_ID] for s in sentences]  # the sentences to recover keep every subword


def test_translation_length_limits():
    model = build().eval()
    with torch.no_grad():
        model.output_bias[EOS_ID] = -1e4  # the model never ends a sentence: max_len decides
    sentences = sentences_of([1, 4, 10])
    batch = back_translate(model, sentences, EN, FR)
    assert [len(r) - 1 for r in rows(batch.src_tokens)] == [int(1.3 * n + 5) for n in (1, 4, 10)]
    assert all(r[-1] == EOS_ID for r in rows(batch.src_tokens))
    batch = back_translate(model, sentences, EN, FR, max_len_a=0.0, max_len_b=2)
    assert [len(r) for r in rows(batch.src_tokens)] == [3, 3, 3]

    # Sentences longer than the model's positions are cut so that the batch still fits the model.
    short = build(max_positions=16).train()
    with torch.no_grad():
        short.output_bias[EOS_ID] = -1e4
    batch = back_translate(short, sentences_of([30, 5]), EN, FR)
    assert batch.src_tokens.size(1) <= 16 and batch.dec_tokens.size(1) <= 16
    loss, stats = seq2seq_loss(short, batch)
    assert math.isfinite(loss.item()) and stats["tokens"] == 16 + 6


# --- the objective schedule ------------------------------------------------------------------------------


def test_objective_every_sets_the_proportions():
    objectives = [Objective(f"every{n}", 1.0, n, stream=None) for n in (1, 2, 3)]
    visits = {obj.name: [step for step in range(12) if obj.active(step)] for obj in objectives}
    assert visits == {"every1": list(range(12)), "every2": [0, 2, 4, 6, 8, 10], "every3": [0, 3, 6, 9]}
    assert [len(v) for v in visits.values()] == [12, 6, 4]  # proportions 1 : 1/2 : 1/3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Splits `train` (parallel en/fr), `unsup` (en and fr from different sentences) and `valid` (parallel)."""
    root = tmp_path_factory.mktemp("bt-data")
    inputs: dict[str, dict[str, Path]] = {}
    for split, seed_en, seed_fr, n in (("train", 0, 0, 200), ("unsup", 2, 3, 200), ("valid", 1, 1, 24)):
        en, _ = synthetic_pairs(n, seed_en)
        _, fr = synthetic_pairs(n, seed_fr)
        inputs[split] = {
            "en": write_lines(root / "text" / f"{split}.en", en),
            "fr": write_lines(root / "text" / f"{split}.fr", fr),
        }
    tok = train_tokenizer([inputs["train"]["en"], inputs["train"]["fr"]], root / "spm", 300)
    return prepare_dir(root / "data", tok.path, inputs, parallel_splits={"train", "valid"})


def write_config(path: Path, objectives: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"objectives": objectives}))
    return path


def test_train_logs_an_every_2_objective_on_its_steps_only(data_dir, tmp_path):
    config = write_config(
        tmp_path / "run.yaml", [{"name": "mass", "lang": "en"}, {"name": "mass", "lang": "fr", "every": 2}]
    )
    run = tmp_path / "run"
    cfg = tiny_config(
        data_dir, run, "train.max_steps=6", "train.eval_interval=100", "train.save_interval=100", path=config
    )
    assert [o.every for o in cfg.objectives] == [1, 2]
    train(cfg)
    records = [r for r in read_log(run) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss_mass_en"] > 0 for r in records)
    # Updates are 0-based in the schedule: `every: 2` runs in updates 0, 2, 4, logged as steps 1, 3, 5.
    fr_steps = {r["step"]: r["loss_mass_fr"] for r in records if "loss_mass_fr" in r}
    assert set(fr_steps) == {1, 3, 5}, fr_steps
    assert all(math.isfinite(v) and v > 0 for v in fr_steps.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: the translation is generated under autocast too
def test_train_with_a_bt_objective_on_the_unsup_split(data_dir, tmp_path, precision):
    objectives = [{"name": "mass", "lang": "en"}, {"name": "bt", "src": "en", "tgt": "fr"}]
    run = tmp_path / "run"
    cfg = tiny_config(
        data_dir,
        run,
        "data.train_split=unsup",
        f"train.precision={precision}",
        "train.max_steps=3",
        "train.eval_interval=100",
        "train.save_interval=100",
        path=write_config(tmp_path / "run.yaml", objectives),
    )
    metrics = train(cfg)
    records = [r for r in read_log(run) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert math.isfinite(r["loss_bt_en-fr-en"]) and r["loss_bt_en-fr-en"] > 0
        assert math.isfinite(r["loss_mass_en"])
        assert 0 < r["bt_generation_share"] < 1
    # The bt objective is validated on the parallel valid split, as en -> fr translation.
    assert math.isfinite(metrics["valid_ppl_en-fr"]) and math.isfinite(metrics["valid_ppl_mass_en"])


def test_restrict_vocab_bans_the_subwords_never_seen_in_the_target_language(data_dir, tmp_path, monkeypatch):
    from mass import train as train_module
    from mass.data.binarize import load_data_dir

    seen_masks = []

    def recording(model, sentences, lang, via_lang, banned=None):
        seen_masks.append((via_lang, banned))
        return back_translate(model, sentences, lang, via_lang, banned=banned)

    monkeypatch.setattr(train_module, "back_translate", recording)
    objectives = [
        {"name": "bt", "src": "en", "tgt": "fr", "restrict_vocab": True},
        {"name": "bt", "src": "fr", "tgt": "en"},
    ]
    cfg = tiny_config(
        data_dir,
        tmp_path / "run",
        "data.train_split=unsup",
        "train.max_steps=2",
        "train.eval_interval=100",
        "train.save_interval=100",
        path=write_config(tmp_path / "run.yaml", objectives),
    )
    train(cfg)

    data = load_data_dir(data_dir)
    fr_tokens = {t for i in range(len(data.array("unsup", "fr"))) for t in data.array("unsup", "fr")[i].tolist()}
    expected = torch.tensor([t not in fr_tokens and t != EOS_ID for t in range(data.vocab_size)])
    masks = dict(seen_masks)
    assert len(seen_masks) == 4 and masks.keys() == {0, 1}  # two updates, one step per direction
    assert torch.equal(masks[1], expected)  # en -> fr: only subwords of the French text
    assert 0 < int(expected.sum()) < data.vocab_size - NUM_SPECIAL
    assert masks[0] is None  # fr -> en was not restricted


def test_copied_pieces_script_counts_subwords_unseen_in_the_target_language(data_dir, tmp_path):
    """scripts/copied_pieces.py (RESULTS.md's copied-subword figures) on a run whose "outputs" are known."""
    import subprocess
    import sys

    from mass.data.binarize import load_data_dir

    run = tmp_path / "run"
    train(tiny_config(data_dir, run, "data.train_split=unsup", "train.max_steps=1", "train.save_interval=1"))
    data = load_data_dir(data_dir)
    tokenizer = data.tokenizer()
    french = [tokenizer.decode(data.array("unsup", "fr")[i].tolist()) for i in range(5)]
    english = [tokenizer.decode(data.array("unsup", "en")[i].tolist()) for i in range(5)]
    (run / "eval").mkdir()
    (run / "eval" / "mt-en-fr-test-first5.hyp.txt").write_text("\n".join(french + english) + "\n")

    seen = data.array("unsup", "fr").token_counts(data.vocab_size) > 0
    pieces = [i for line in french + english for i in tokenizer.encode(line)]
    expected = 100 * sum(not seen[i] for i in pieces) / len(pieces)
    assert 0 < expected < 50  # French text is all seen, the English half partly not

    script = Path(__file__).parents[1] / "scripts" / "copied_pieces.py"
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, check=True).stdout
    row = next(line for line in out.splitlines() if "en→fr" in line)
    assert row.split("|")[3].strip() == str(len(pieces))
    assert row.split("|")[4].strip() == f"{expected:.1f}%"


def test_restrict_vocab_is_for_back_translation_only():
    from mass.config import ObjectiveConfig

    with pytest.raises(ValueError, match="restrict_vocab is for bt objectives"):
        ObjectiveConfig(name="mass", lang="en", restrict_vocab=True)


def test_validation_scores_both_directions_and_their_mean(data_dir, tmp_path):
    """`mass unsup`'s evaluator: BLEU, chrF and cross-lingual retrieval per direction, each the score of the
    model's own greedy outputs on the first validation pairs, and their means under the plain names."""
    from mass.config import ObjectiveConfig
    from mass.data.binarize import load_data_dir
    from mass.inference import Generator
    from mass.metrics import bleu, retrieval_accuracy
    from mass.tasks import get_task, make_evaluator

    cfg = tiny_config(data_dir, tmp_path / "run", "data.langs=[en,fr]", "generate.max_len_b=8")
    data = load_data_dir(data_dir)
    directions = [ObjectiveConfig(name="translate", src=a, tgt=b) for a, b in (("en", "fr"), ("fr", "en"))]
    evaluator = make_evaluator(cfg, get_task("mt"), data, directions, sentences=10)
    cfg.model.vocab_size, cfg.model.num_langs = data.vocab_size, 2
    torch.manual_seed(0)
    model = MassModel(cfg.model).train()
    metrics = evaluator(model)
    assert model.training  # decoding for validation leaves the model as it found it

    generator, tokenizer = Generator(model, data.tokenizer(), ["en", "fr"]), data.tokenizer()
    for src, tgt in (("en", "fr"), ("fr", "en")):
        sources = [data.array("valid", src)[i].tolist() for i in range(10)]
        refs = [data.array("valid", tgt)[i].tolist() for i in range(10)]
        outputs = generator.generate(sources, src, tgt, cfg.generate)
        hyps = [tokenizer.decode(o[0].tokens) for o in outputs]
        expected = bleu(hyps, [tokenizer.decode(r) for r in refs])["bleu"]
        assert metrics[f"bleu_{src}-{tgt}"] == pytest.approx(expected)
        vectors = generator.sentence_vectors(sources, src), generator.sentence_vectors(refs, tgt)
        assert metrics[f"retrieval_{src}-{tgt}"] == pytest.approx(100 * retrieval_accuracy(*vectors))
    for name in ("bleu", "chrf", "retrieval"):
        assert metrics[name] == pytest.approx((metrics[f"{name}_en-fr"] + metrics[f"{name}_fr-en"]) / 2)
        assert 0 <= metrics[name] <= 100
