"""`mass export`: the exported Hugging Face BART computes our model's function for the exported direction
(logits, training loss, greedy outputs), its tokenizer gives SentencePiece's ids and text back, and the command writes a
directory `from_pretrained` loads offline, or refuses with a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import fast_training, make_data_dir, tiny_config

from mass.batch import pad_sequences, seq2seq_batch
from mass.cli import main
from mass.config import GenerationConfig
from mass.data.corpus import export_corpus
from mass.data.tokenizer import BOS_ID, EOS_ID, NEVER_GENERATED, NUM_SPECIAL, PAD_ID, train_tokenizer
from mass.errors import MassError
from mass.export import export_hf, hf_tokenizer, to_bart
from mass.inference import Generator, load_generator
from mass.model import MassModel, tiny
from mass.objectives import seq2seq_loss
from mass.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def peaked_model(encoder_lang_embed: bool, pre_norm: bool = False) -> MassModel:
    """A tiny random two-language model with wide weights, so that its outputs are peaked, not uniform."""
    cfg = tiny()
    cfg.vocab_size, cfg.num_langs, cfg.dropout, cfg.attention_dropout = 60, 2, 0.0, 0.0
    cfg.encoder_lang_embed, cfg.pre_norm = encoder_lang_embed, pre_norm
    torch.manual_seed(0)
    model = MassModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
        model.embed.langs.weight.normal_(0, 1.0)  # languages that matter: a wrong fold would show
    return model


def sources(n: int = 12) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 15, (n,), generator=gen).tolist()
    return [torch.randint(NUM_SPECIAL, 60, (k,), generator=gen).tolist() for k in lengths]


@pytest.mark.parametrize("encoder_lang_embed", [True, False])
def test_bart_computes_our_function(encoder_lang_embed):
    model = peaked_model(encoder_lang_embed)
    src = pad_sequences([s + [EOS_ID] for s in sources()])
    tgt = pad_sequences([[BOS_ID, *s[::-1]] for s in sources()])
    for src_lang, tgt_lang in ((0, 1), (1, 0)):
        bart = to_bart(model, src_lang, tgt_lang)
        positions = torch.arange(tgt.size(1)).expand_as(tgt)
        ours = model(src, torch.full((len(src),), src_lang), tgt, positions, torch.full((len(src),), tgt_lang))
        with torch.no_grad():
            theirs = bart(input_ids=src, attention_mask=src != PAD_ID, decoder_input_ids=tgt).logits
        real = tgt != PAD_ID  # BART gets no decoder padding mask: compare the real positions
        torch.testing.assert_close(theirs[real], ours[real], atol=2e-5, rtol=1e-5)
    # The other direction's languages give other logits: the fold is per direction.
    assert not torch.allclose(to_bart(model, 1, 0)(input_ids=src, decoder_input_ids=tgt).logits[real], theirs[real])


def test_bart_training_loss_equals_ours():
    """Training the export with transformers' `labels` continues our fine-tuning objective."""
    model = peaked_model(encoder_lang_embed=True)
    srcs = sources()
    batch = seq2seq_batch(srcs, [s[::-1] for s in srcs], 0, 1)
    _, stats = seq2seq_loss(model, batch)
    labels = batch.target.masked_fill(batch.target == PAD_ID, -100)  # transformers' "no label"
    with torch.no_grad():
        theirs = to_bart(model, 0, 1)(input_ids=batch.src_tokens, attention_mask=batch.memory_mask, labels=labels)
    assert theirs.loss.item() == pytest.approx(stats["nll"] / stats["tokens"], rel=1e-5)


def test_bart_greedy_generate_equals_ours():
    model = peaked_model(encoder_lang_embed=True)
    with torch.no_grad():
        model.output_bias[EOS_ID] = 7.0  # some outputs end on EOS (after min_len), others at the length limit
        model.output_bias[PAD_ID] = 3.0  # would win somewhere, were it not suppressed on both sides
    seqs, max_len, min_len = sources(), 12, 2  # transformers' max_new_tokens counts EOS: 13
    cfg = GenerationConfig(beam=1, max_len_a=0, max_len_b=max_len, min_len=min_len)
    ours = Generator(model, None, ["en", "fr"]).generate(seqs, "en", "fr", cfg)
    src = pad_sequences([s + [EOS_ID] for s in seqs])
    bart = to_bart(model, 0, 1)
    out = bart.generate(
        src,
        attention_mask=src != PAD_ID,
        num_beams=1,
        do_sample=False,
        min_new_tokens=min_len,
        max_new_tokens=13,
        suppress_tokens=list(NEVER_GENERATED),
        forced_eos_token_id=EOS_ID,  # as the export sets: at the limit EOS comes, as in ours
    )
    theirs = []
    for row in out[:, 1:].tolist():  # after the start token, up to EOS: every row has one
        theirs.append(row[: row.index(EOS_ID)])
    assert [nbest[0].tokens for nbest in ours] == theirs
    assert {len(t) for t in theirs} == {min_len, max_len}  # both endings, the earliest at min_len


@pytest.fixture(scope="module")
def bible_text(tmp_path_factory) -> list[str]:
    text = export_corpus("bible", tmp_path_factory.mktemp("bible"))
    return [line for lang in ("en", "fr") for line in (text / f"valid.{lang}").read_text(encoding="utf-8").splitlines()]


EDGE_CASES = [
    "  leading,  inner   and trailing spaces  ",
    "tab\tseparated",
    "",
    "émoji 🙂, ＦＵＬＬＷＩＤＴＨ and ｶﾀｶﾅ, a ﬁ ligature, a\u00a0no-break space",
    "Ἐν ἀρχῇ ἦν ὁ λόγος",  # letters the tokenizer never saw
]


@pytest.mark.parametrize("byte_fallback", [True, False])
def test_hf_tokenizer_gives_sentencepiece_ids(bible_text, tmp_path, byte_fallback):
    spm = tmp_path / "text.txt"
    spm.write_text("\n".join(bible_text[::2]) + "\n", encoding="utf-8")
    ours = train_tokenizer([spm], tmp_path / "spm", 1000, byte_fallback=byte_fallback)
    theirs = hf_tokenizer(ours.path)
    lines = bible_text[1::2] + EDGE_CASES
    assert [theirs(line)["input_ids"] for line in lines] == [ours.encode(line) + [EOS_ID] for line in lines]
    if byte_fallback:  # every character is covered: the text comes back as ours does (without byte fallback
        # an unknown piece is dropped by skip_special_tokens where ours shows " ⁇ ")
        ids = [ours.encode(line) for line in lines]
        assert theirs.batch_decode(ids, skip_special_tokens=True) == ours.decode_batch(ids)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    with fast_training():
        train(tiny_config(make_data_dir(root), run, "train.max_steps=2", "model.encoder_lang_embed=true"))
    return run


def test_mass_export_writes_what_from_pretrained_loads(run, tmp_path, capsys):
    out = tmp_path / "fr-en-hf"
    assert main(["export", str(run), str(out), "--src", "fr", "--tgt", "en"]) == 0
    assert str(out) in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    bart = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert bart.generation_config.num_beams == 5 and bart.generation_config.decoder_start_token_id == BOS_ID
    assert bart.generation_config.suppress_tokens == list(NEVER_GENERATED)  # as ours
    assert (bart.config.mass_src, bart.config.mass_tgt) == ("fr", "en")
    assert Path(bart.config.mass_checkpoint).parent == run / "checkpoints"
    assert "language: [fr, en]" in (out / "README.md").read_text()  # the model card

    generator = load_generator(run)  # the checkpoint as `mass generate` loads it
    line = "the cat sees the dog"
    ids = tokenizer(line, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == generator.tokenizer.encode(line) + [EOS_ID]
    # A source longer than the encoder's positions is cut to them, </s> kept, when asked (truncation=True).
    max_positions = generator.model.cfg.max_positions
    long = tokenizer(" ".join([line] * max_positions), truncation=True, return_tensors="pt")["input_ids"]
    assert tokenizer.model_max_length == long.size(1) == max_positions and long[0, -1] == EOS_ID
    assert bart.generate(long, max_new_tokens=2).size(0) == 1  # BART reads all of it
    tgt = torch.tensor([[BOS_ID, *generator.tokenizer.encode("le chat voit le chien")]])
    fr, en = generator.lang_id("fr"), generator.lang_id("en")
    ours = generator.model(ids, torch.tensor([fr]), tgt, torch.arange(tgt.size(1))[None], torch.tensor([en]))
    with torch.no_grad():
        theirs = bart(input_ids=ids, decoder_input_ids=tgt).logits
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-5)

    # Exporting the other direction replaces the earlier export: its decoder positions hold French's embedding.
    assert main(["export", str(run), str(out), "--src", "en", "--tgt", "fr"]) == 0
    positions = generator.model.embed.positions.weight + generator.model.embed.langs.weight[fr]
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out)
    torch.testing.assert_close(reloaded.model.decoder.embed_positions.weight[2:], positions)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left beside it


def test_export_refusals(run, tmp_path, capsys):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "todo.txt").write_text("keep me")
    assert main(["export", str(run), str(precious)]) == 1
    assert "is not an earlier export" in capsys.readouterr().err and (precious / "todo.txt").is_file()
    assert main(["export", str(run), str(tmp_path / "x"), "--src", "de", "--tgt", "en"]) == 1
    assert "language 'de' is not in the model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(MassError, match="pre-norm"):
        to_bart(peaked_model(True, pre_norm=True), 0, 1)


def test_export_without_transformers_is_a_clear_error(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed: import fails
    with pytest.raises(MassError, match=r'pip install -e "\.\[hf\]"'):
        export_hf(run, tmp_path / "out", "fr", "en")


def test_export_takes_the_tasks_generation_defaults(run, tmp_path):
    """A summarizer's export decodes as `mass generate --task summarization` does: no repeated trigram."""
    export_hf(run, tmp_path / "mt", "en", "en")
    export_hf(run, tmp_path / "summ", "en", "en", task="summarization")
    mt, summ = (transformers.GenerationConfig.from_pretrained(tmp_path / name) for name in ("mt", "summ"))
    assert (mt.num_beams, mt.no_repeat_ngram_size, summ.num_beams, summ.no_repeat_ngram_size) == (5, 0, 5, 3)
    assert mt.max_new_tokens is None and summ.max_new_tokens == 41  # a summary: 40 tokens and its EOS, as ours
    assert mt.forced_eos_token_id == summ.forced_eos_token_id == EOS_ID  # so the 41st is EOS, as ours
    assert "tags: [mass, summarization, bart]" in (tmp_path / "summ" / "README.md").read_text()
    with pytest.raises(MassError, match="unknown task"):
        export_hf(run, tmp_path / "bad", "en", "en", task="poetry")
    assert not (tmp_path / "bad").exists()
