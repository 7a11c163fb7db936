"""The model side of generation: the KV-cached `decode_step` against a full re-decode, a tiny model that learned
to reverse its input generating exact answers through `Generator.generate`, and the Generator's
bookkeeping (languages, training mode, input order)."""

from __future__ import annotations

import random

import pytest
import torch

from mass.batch import pad_sequences, seq2seq_batch
from mass.config import GenerationConfig
from mass.data.tokenizer import BOS_ID, EOS_ID, NEVER_GENERATED, NUM_SPECIAL, PAD_ID
from mass.errors import MassError
from mass.generate import beam_search, greedy_search
from mass.inference import Generator, make_decode_step
from mass.model import MassModel, tiny
from mass.objectives import seq2seq_loss

LANGS = ["en", "fr"]
REAL = 20  # real tokens of the reverse task
VOCAB = NUM_SPECIAL + REAL


pytestmark = pytest.mark.usefixtures("one_thread")


def build(vocab: int = VOCAB, seed: int = 0, pre_norm: bool = False, std: float = 0.0) -> MassModel:
    """A tiny two-language model without dropout; `std` > 0 redraws its matrices wider, for peaked outputs."""
    cfg = tiny()
    cfg.vocab_size, cfg.num_langs, cfg.pre_norm = vocab, len(LANGS), pre_norm
    cfg.dropout = cfg.attention_dropout = 0.0
    torch.manual_seed(seed)
    model = MassModel(cfg)
    if std:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, std)
    return model.eval()


def uncached_decode_step(model: MassModel, memory, memory_mask, tgt_lang):
    """A reference `decode_step` without a cache: it keeps every row's whole prefix, reorders its own state with
    `parents`, and runs the full decoder over the prefix at each call, keeping the last position."""
    state = {"prefix": torch.empty(memory.size(0), 0, dtype=torch.long), "memory": memory, "mask": memory_mask}
    state["lang"] = tgt_lang

    def decode_step(tokens, parents):
        if parents is not None:
            for key in state:
                state[key] = state[key].index_select(0, parents)
        state["prefix"] = torch.cat([state["prefix"], tokens[:, None]], dim=1)
        prefix = state["prefix"]
        positions = torch.arange(prefix.size(1)).expand_as(prefix)
        hidden = model.decode(prefix, positions, state["lang"], state["memory"], state["mask"])
        logp = torch.log_softmax(model.logits(hidden[:, -1]).float(), dim=-1)
        logp[:, list(NEVER_GENERATED)] = float("-inf")  # as the cached step
        return logp

    return decode_step


def random_sources(seed: int, lengths: list[int], vocab: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(NUM_SPECIAL, vocab) for _ in range(n)] for n in lengths]


# --- the KV cache changes nothing ------------------------------------------------------------------------


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("beam", [1, 4])
def test_cached_search_equals_uncached_search(beam, pre_norm):
    vocab = 30
    model = build(vocab, seed=3, pre_norm=pre_norm, std=0.1)
    sources = random_sources(0, [3, 9, 1, 6, 4], vocab)
    src = pad_sequences([s + [EOS_ID] for s in sources])
    lang = torch.zeros(len(sources), dtype=torch.long)
    max_len = [len(s) + 4 for s in sources]
    options = dict(bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_len, min_len=2, no_repeat_ngram=2)
    with torch.no_grad():
        memory, mask = model.encode(src, lang), src != PAD_ID  # one row per sentence
        tgt = torch.ones(len(sources), dtype=torch.long)
        cached = beam_search(
            make_decode_step(model, memory, mask, tgt, group=beam),
            len(sources),
            beam_size=beam,
            length_penalty=1.5,
            **options,
        )
        full = beam_search(
            uncached_decode_step(model, memory, mask, tgt), len(sources), beam_size=beam, length_penalty=1.5, **options
        )
    for hyps_cached, hyps_full in zip(cached, full, strict=True):
        assert [h.tokens for h in hyps_cached] == [h.tokens for h in hyps_full]
        for a, b in zip(hyps_cached, hyps_full, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)
    # The outputs are not degenerate: they differ between sentences and some are longer than min_len.
    assert len({tuple(h[0].tokens) for h in cached}) > 1
    assert max(len(h[0].tokens) for h in cached) > 2

    if beam == 1:
        with torch.no_grad():
            greedy_cached = greedy_search(make_decode_step(model, memory, mask, tgt), len(sources), **options)
            greedy_full = greedy_search(uncached_decode_step(model, memory, mask, tgt), len(sources), **options)
        assert [h.tokens for h in greedy_cached] == [h.tokens for h in greedy_full]
        assert [h.log_prob for h in greedy_cached] == pytest.approx([h.log_prob for h in greedy_full], abs=1e-4)
        assert [h.tokens for h in greedy_cached] == [h[0].tokens for h in cached]  # beam 1 is greedy


def generate_ids(generator: Generator, *args) -> list[list[list[int]]]:
    """`Generator.generate`'s n-best token ids, without their scores."""
    return [[h.tokens for h in nbest] for nbest in generator.generate(*args)]


# --- a model that learned to reverse its input -----------------------------------------------------------


def reverse_sample(rng: random.Random) -> list[int]:
    return [rng.randrange(NUM_SPECIAL, VOCAB) for _ in range(rng.randint(3, 7))]


@pytest.fixture(scope="module")
def reverser() -> tuple[MassModel, list[list[int]]]:
    """A tiny model trained to output its input reversed (en -> fr), and 100 held-out inputs."""
    rng = random.Random(0)
    held_out = [reverse_sample(rng) for _ in range(100)]
    unseen = {tuple(s) for s in held_out}
    model = build(seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    recent: list[float] = []
    threads = torch.get_num_threads()  # module fixtures run before the function-scoped `one_thread`
    torch.set_num_threads(1)
    for _ in range(500):
        seqs = [s for s in (reverse_sample(rng) for _ in range(48)) if tuple(s) not in unseen]
        loss, stats = seq2seq_loss(model, seq2seq_batch(seqs, [s[::-1] for s in seqs], 0, 1))
        optimizer.zero_grad()
        (loss / stats["tokens"]).backward()
        optimizer.step()
        recent = [*recent[-9:], stats["nll"] / stats["tokens"]]
        if len(recent) == 10 and sum(recent) / 10 < 0.03:
            break
    torch.set_num_threads(threads)
    assert sum(recent) / len(recent) < 0.05, recent
    return model.eval(), held_out


@pytest.mark.parametrize("beam", [1, 4])
def test_reverser_generates_exact_answers(reverser, beam):
    model, held_out = reverser
    generator = Generator(model, tokenizer=None, langs=LANGS)  # generation never touches the tokenizer
    outputs = generate_ids(generator, held_out, "en", "fr", GenerationConfig(beam=beam, nbest=min(beam, 2)))
    assert len(outputs) == len(held_out)
    assert all(len(out) == min(beam, 2) for out in outputs)  # nbest hypotheses per sentence
    exact = sum(out[0] == s[::-1] for out, s in zip(outputs, held_out, strict=True)) / len(held_out)
    assert exact >= 0.9, exact
    if beam > 1:
        greedy = generate_ids(generator, held_out, "en", "fr", GenerationConfig(beam=1))
        exact_greedy = sum(out[0] == s[::-1] for out, s in zip(greedy, held_out, strict=True)) / len(held_out)
        assert exact >= exact_greedy
        # The second-best hypothesis is a different sentence, not a duplicate of the best.
        assert all(out[0] != out[1] for out in outputs)


def test_scores_are_the_models_log_probs_of_the_outputs(reverser):
    """Each hypothesis carries the log-prob that teacher forcing gives its tokens and EOS, and its score
    divides that by (length + 1) ** length_penalty: for greedy search, beam search and samples alike."""
    model, held_out = reverser
    generator = Generator(model, tokenizer=None, langs=LANGS)
    sources = held_out[:8]
    checked = 0
    for cfg in (
        GenerationConfig(beam=1, length_penalty=0.5),
        GenerationConfig(beam=3, nbest=3, length_penalty=0.5),
        GenerationConfig(sampling=True, nbest=3, temperature=2.0, length_penalty=0.5),
    ):
        for source, nbest in zip(sources, generator.generate(sources, "en", "fr", cfg), strict=True):
            for hyp in nbest:
                if len(hyp.tokens) == int(cfg.max_len_a * len(source) + cfg.max_len_b):
                    continue  # cut at max_len: no EOS was scored
                with torch.no_grad():
                    _, stats = seq2seq_loss(model, seq2seq_batch([source], [hyp.tokens], 0, 1))
                assert hyp.log_prob == pytest.approx(-stats["nll"], abs=1e-3)
                assert hyp.score == pytest.approx(hyp.log_prob / (len(hyp.tokens) + 1) ** 0.5, abs=1e-3)
                checked += 1
    assert checked >= 50


def test_sampling_draws_nbest_samples_per_input(reverser):
    """Sampling from a confident model mostly draws its answer; a hot temperature draws other outputs;
    the same seed repeats the draws; top-k 1 is greedy search."""
    model, held_out = reverser
    generator = Generator(model, tokenizer=None, langs=LANGS)
    sources = held_out[:20]
    greedy = generate_ids(generator, sources, "en", "fr", GenerationConfig(beam=1))
    cfg = GenerationConfig(beam=5, sampling=True, nbest=3, seed=1)  # sampling wins over beam
    samples = generate_ids(generator, sources, "en", "fr", cfg)
    assert all(len(out) == 3 for out in samples)
    assert samples == generate_ids(generator, sources, "en", "fr", cfg)
    right = sum(draw == s[::-1] for out, s in zip(samples, sources, strict=True) for draw in out)
    assert right >= 0.7 * 3 * len(sources), right
    hot = generate_ids(generator, sources, "en", "fr", GenerationConfig(sampling=True, nbest=3, temperature=5.0))
    assert sum(draw != s[::-1] for out, s in zip(hot, sources, strict=True) for draw in out) >= len(sources)
    top1 = generate_ids(generator, sources, "en", "fr", GenerationConfig(sampling=True, sampling_topk=1, nbest=2))
    assert top1 == [[g[0], g[0]] for g in greedy]
    with pytest.raises(ValueError, match="sampling needs"):
        GenerationConfig(sampling=True, temperature=0.0)


def test_generate_keeps_input_order_across_length_batches(reverser):
    model, held_out = reverser
    generator = Generator(model, tokenizer=None, langs=LANGS)
    sources = held_out[:16]  # lengths 3..7 in random order
    assert sorted(sources, key=len) != sources
    # A budget of 20 tokens splits the 16 sentences into many length-sorted batches.
    for beam in (1, 3):
        batched = generate_ids(generator, sources, "en", "fr", GenerationConfig(beam=beam, max_tokens=20))
        alone = [generate_ids(generator, [s], "en", "fr", GenerationConfig(beam=beam))[0] for s in sources]
        assert batched == alone
        assert sum(out[0] == s[::-1] for out, s in zip(batched, sources, strict=True)) >= 14


def test_generate_of_an_empty_list_and_of_an_empty_sentence(reverser):
    model, _ = reverser
    generator = Generator(model, tokenizer=None, langs=LANGS)
    assert generate_ids(generator, [], "en", "fr", GenerationConfig(beam=1)) == []
    (out,) = generate_ids(generator, [[]], "en", "fr", GenerationConfig(beam=2, max_len_a=1.0, max_len_b=3))
    assert len(out[0]) <= 3


@pytest.mark.parametrize(
    "cfg",
    [GenerationConfig(beam=1), GenerationConfig(beam=4, nbest=4), GenerationConfig(sampling=True, nbest=3)],
    ids=["greedy", "beam", "sampling"],
)
def test_special_symbols_are_never_generated(cfg):
    """PAD, BOS and MASK are never targets; a model that still ranks them first (random weights, as when
    back-translation starts from scratch) must not emit them: a generated PAD would be read as padding."""
    model = build(std=0.3)
    with torch.no_grad():
        model.output_bias[list(NEVER_GENERATED)] = 50.0  # far above every other token
    sources = [[NUM_SPECIAL + i for i in range(n)] for n in (3, 7, 12)]
    out = generate_ids(Generator(model, tokenizer=None, langs=LANGS), sources, "en", "fr", cfg)
    tokens = [t for nbest in out for hyp in nbest for t in hyp]
    assert tokens and not set(tokens) & set(NEVER_GENERATED)


# --- Generator bookkeeping -------------------------------------------------------------------------------


def test_unknown_language_names_the_model_languages():
    generator = Generator(build(), tokenizer=None, langs=LANGS)
    assert generator.lang_id("en") == 0 and generator.lang_id("fr") == 1
    with pytest.raises(MassError, match=r"'de'.*en, fr"):
        generator.lang_id("de")


@pytest.mark.parametrize("training", [True, False])
def test_generate_restores_the_training_mode(training):
    model = build(std=0.1)
    model.train(training)
    generator = Generator(model, tokenizer=None, langs=LANGS)
    sources = random_sources(1, [4, 2, 5], VOCAB)
    for beam in (1, 3):
        outputs = generate_ids(generator, sources, "en", "fr", GenerationConfig(beam=beam))
        assert len(outputs) == 3
        assert model.training is training
        assert all(m.training is training for m in model.modules())


def test_generate_with_an_unknown_language_restores_the_training_mode():
    model = build().train()
    generator = Generator(model, tokenizer=None, langs=LANGS)
    with pytest.raises(MassError, match="not in the model"):
        generate_ids(generator, [[5, 6, 7]], "en", "de", GenerationConfig(beam=1))
    assert model.training  # a failed call must not leave a training model in eval mode


def test_generation_runs_without_dropout():
    """Generation switches dropout off, whatever mode the model was in: repeated calls agree."""
    cfg = tiny()
    cfg.vocab_size, cfg.num_langs, cfg.dropout, cfg.attention_dropout = VOCAB, 2, 0.5, 0.5
    torch.manual_seed(0)
    model = MassModel(cfg).train()
    generator = Generator(model, tokenizer=None, langs=LANGS)
    sources = random_sources(2, [5, 3, 6, 4], VOCAB)
    runs = [generate_ids(generator, sources, "en", "fr", GenerationConfig(beam=2, min_len=3)) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert model.training


def test_sentence_vectors_ignore_padding_and_keep_input_order():
    """A sentence's vector is the same alone and in a padded batch beside longer ones, and comes back in place."""
    model = build()
    generator = Generator(model, tokenizer=None, langs=LANGS)
    sentences = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    together = generator.sentence_vectors(sentences, "fr")
    for i, sentence in enumerate(sentences):
        alone = generator.sentence_vectors([sentence], "fr")[0]
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[1])
    assert not torch.allclose(generator.sentence_vectors(sentences[:1], "en")[0], together[0])  # languages differ


def test_device_names_resolve_for_each_rank():
    from mass.distributed import pick_device

    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert pick_device("auto") == expected  # the CLI's default: the GPU if there is one
    if torch.cuda.is_available():
        assert pick_device("cuda", local_rank=3) == torch.device("cuda:3")  # one GPU per torchrun process
        assert pick_device("cuda:1", local_rank=3) == torch.device("cuda:1")  # an explicit GPU wins
    else:  # a clear error, not torch's assertion deep inside the first .to(device)
        with pytest.raises(MassError, match="sees no CUDA GPU"):
            pick_device("cuda", local_rank=3)
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(MassError, match="unknown device 'gpu'"):
        pick_device("gpu")


def test_one_named_gpu_for_several_processes_is_refused(monkeypatch):
    from mass.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(MassError, match="train.device=cuda:0 names one GPU: with torchrun use cuda or auto"):
        setup("cuda:0")
