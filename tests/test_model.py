"""Numerics of the MASS encoder-decoder: padding, causality, masks, the KV cache, tied embeddings, presets,
and two small training runs (a copy task and the MASS objective)."""

from __future__ import annotations

import random

import pytest
import torch

from mass.batch import seq2seq_batch
from mass.data.tokenizer import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID
from mass.masking import MaskConfig, mass_batch
from mass.model import PRESETS, MassModel, base, count_parameters, paper, small, tiny
from mass.objectives import seq2seq_loss

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 71  # differs from embed_dim, so a (V, D) weight is recognisable
ATOL = 1e-5


def build(pre_norm: bool = False, vocab: int = VOCAB, seed: int = 0) -> MassModel:
    cfg = tiny()
    cfg.vocab_size, cfg.num_langs, cfg.pre_norm = vocab, 2, pre_norm
    cfg.dropout = cfg.attention_dropout = 0.0
    torch.manual_seed(seed)
    return MassModel(cfg).eval()


def random_tokens(gen: torch.Generator, lengths: list[int], vocab: int = VOCAB) -> torch.Tensor:
    """(B, max(lengths)) real subwords, right-padded with PAD."""
    tokens = torch.randint(NUM_SPECIAL, vocab, (len(lengths), max(lengths)), generator=gen)
    for i, n in enumerate(lengths):
        tokens[i, n:] = PAD_ID
    return tokens


def decoder_inputs(gen: torch.Generator, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder tokens starting with BOS, at increasing but non-contiguous positions (like a MASS fragment)."""
    tokens = torch.randint(NUM_SPECIAL, VOCAB, (batch, length), generator=gen)
    tokens[:, 0] = BOS_ID
    positions = torch.arange(length).expand(batch, length) * 2 + torch.arange(batch)[:, None]
    return tokens, positions.contiguous()


# --- padding, causality, masks ---------------------------------------------------------------------------


@pytest.mark.parametrize("pre_norm", [False, True])
def test_padding_does_not_change_outputs(pre_norm):
    model = build(pre_norm)
    gen = torch.Generator().manual_seed(1)
    src = random_tokens(gen, [4, 9, 7])  # the short sentence first, padded to 9
    dec = random_tokens(gen, [3, 8, 6])
    dec[:, 0] = BOS_ID
    pos = torch.arange(dec.size(1)).expand_as(dec)
    lang = torch.tensor([0, 1, 1])
    with torch.no_grad():
        memory = model.encode(src, lang)
        logits = model.logits(model.decode(dec, pos, lang, memory, src != PAD_ID))
        alone_src = src[:1, :4]
        alone_memory = model.encode(alone_src, lang[:1])
        alone_hidden = model.decode(dec[:1, :3], pos[:1, :3], lang[:1], alone_memory, alone_src != PAD_ID)
        alone_logits = model.logits(alone_hidden)
    torch.testing.assert_close(memory[0, :4], alone_memory[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[0, :3], alone_logits[0], atol=ATOL, rtol=0)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_is_causal(pre_norm):
    model = build(pre_norm)
    gen = torch.Generator().manual_seed(2)
    src = random_tokens(gen, [6, 5])
    dec, pos = decoder_inputs(gen, 2, 7)
    lang = torch.tensor([0, 1])
    edited = dec.clone()
    edited[:, 4:] = torch.randint(NUM_SPECIAL, VOCAB, (2, 3), generator=gen)
    with torch.no_grad():
        a = model(src, lang, dec, pos, lang)
        b = model(src, lang, edited, pos, lang)
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=ATOL, rtol=0)
    assert (a[:, 4:] - b[:, 4:]).abs().amax() > 1e-3


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_cannot_see_encoder_states_hidden_by_memory_mask(pre_norm):
    model = build(pre_norm)
    gen = torch.Generator().manual_seed(3)
    src = random_tokens(gen, [8, 8])
    dec, pos = decoder_inputs(gen, 2, 5)
    lang = torch.tensor([0, 1])
    memory_mask = torch.ones(2, 8, dtype=torch.bool)
    memory_mask[:, 2:6] = False  # a masked span
    with torch.no_grad():
        memory = model.encode(src, lang)
        out = model.decode(dec, pos, lang, memory, memory_mask)
        hidden_edit = memory.clone()
        hidden_edit[:, 2:6] = torch.randn(2, 4, memory.size(2), generator=gen)
        visible_edit = memory.clone()
        visible_edit[:, 7] = torch.randn(2, memory.size(2), generator=gen)
        torch.testing.assert_close(model.decode(dec, pos, lang, hidden_edit, memory_mask), out, atol=ATOL, rtol=0)
        assert (model.decode(dec, pos, lang, visible_edit, memory_mask) - out).abs().amax() > 1e-3


def test_language_embeddings_change_outputs():
    model = build()
    gen = torch.Generator().manual_seed(4)
    src = random_tokens(gen, [6, 6])
    dec, pos = decoder_inputs(gen, 2, 4)
    zero, one = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        assert (model.encode(src, zero) - model.encode(src, one)).abs().amax() > 1e-3
        base_logits = model(src, zero, dec, pos, zero)
        assert (model(src, one, dec, pos, zero) - base_logits).abs().amax() > 1e-4  # source language
        assert (model(src, zero, dec, pos, one) - base_logits).abs().amax() > 1e-3  # target language


def test_language_agnostic_encoder_ignores_the_source_language_only():
    model = build()
    model.cfg.encoder_lang_embed = False
    gen = torch.Generator().manual_seed(4)
    src = random_tokens(gen, [6, 4])
    dec, pos = decoder_inputs(gen, 2, 4)
    zero, one = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(src, zero), model.encode(src, one), rtol=0, atol=0)
        # the encoder equals a standard one whose language embeddings are zero
        saved = model.embed.langs.weight.clone()
        model.embed.langs.weight.zero_()
        model.cfg.encoder_lang_embed = True
        torch.testing.assert_close(model.encode(src, one), model.encode(src, zero), rtol=0, atol=0)
        agnostic = model.encode(src, zero)
        model.embed.langs.weight.copy_(saved)
        model.cfg.encoder_lang_embed = False
        torch.testing.assert_close(model.encode(src, one), agnostic, rtol=0, atol=1e-6)
        # the decoder still tells the target languages apart
        base_logits = model(src, zero, dec, pos, zero)
        assert (model(src, zero, dec, pos, one) - base_logits).abs().amax() > 1e-3


# --- incremental decoding --------------------------------------------------------------------------------


def decode_stepwise(model, tokens, positions, lang, memory, memory_mask, cache, start=0):
    """Decode one step at a time with the cache, from step `start`; returns the (B, T - start, D) states."""
    steps = [
        model.decode(tokens[:, t : t + 1], positions[:, t : t + 1], lang, memory, memory_mask, cache)
        for t in range(start, tokens.size(1))
    ]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cached_incremental_decoding_equals_full_decoding(pre_norm):
    model = build(pre_norm)
    gen = torch.Generator().manual_seed(5)
    src = random_tokens(gen, [7, 4, 6, 5])
    dec, pos = decoder_inputs(gen, 4, 6)
    lang = torch.tensor([0, 1, 0, 1])
    memory_mask = src != PAD_ID
    memory_mask[0, 1:3] = False
    memory_mask[3] = False  # a language-model row
    with torch.no_grad():
        memory = model.encode(src, lang)
        full = model.decode(dec, pos, lang, memory, memory_mask)
        cache = model.new_cache()
        stepwise = decode_stepwise(model, dec, pos, lang, memory, memory_mask, cache)
    torch.testing.assert_close(stepwise, full, atol=ATOL, rtol=0)
    assert cache.steps == dec.size(1)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cached_decoding_continues_correctly_after_reorder(pre_norm):
    model = build(pre_norm)
    gen = torch.Generator().manual_seed(6)
    src = random_tokens(gen, [7, 4, 6, 5])
    dec, pos = decoder_inputs(gen, 4, 7)
    lang = torch.tensor([0, 1, 0, 1])
    memory_mask = src != PAD_ID
    memory_mask[2] = False
    index = torch.tensor([2, 0, 0, 1])  # row 0 duplicated, row 3 dropped, order changed
    split = 3
    with torch.no_grad():
        memory = model.encode(src, lang)
        cache = model.new_cache()
        decode_stepwise(model, dec[:, :split], pos[:, :split], lang, memory, memory_mask, cache)
        cache.reorder(index, index)
        # Later steps continue with the reordered rows; their tokens may diverge after the split.
        new_dec = dec[index].clone()
        new_dec[1, split:] = torch.randint(NUM_SPECIAL, VOCAB, (dec.size(1) - split,), generator=gen)
        args = (new_dec, pos[index], lang[index], memory[index], memory_mask[index])
        continued = decode_stepwise(model, *args, cache, start=split)
        full = model.decode(*args)
    torch.testing.assert_close(continued, full[:, split:], atol=ATOL, rtol=0)


def test_two_reorders_between_steps_compose():
    """A cache reordered twice before the next step continues as if reordered once by the composition."""
    model = build(False)
    gen = torch.Generator().manual_seed(8)
    src = random_tokens(gen, [5, 6, 4])
    dec, pos = decoder_inputs(gen, 3, 5)
    lang = torch.tensor([0, 1, 1])
    first, second = torch.tensor([2, 2, 0]), torch.tensor([1, 0])  # rows [0, 2]: one duplicated, one dropped
    both = first[second]
    with torch.no_grad():
        memory = model.encode(src, lang)
        cache = model.new_cache()
        decode_stepwise(model, dec[:, :2], pos[:, :2], lang, memory, src != PAD_ID, cache)
        cache.reorder(first, first)
        cache.reorder(second, second)
        args = (dec[both], pos[both], lang[both], memory[both], (src != PAD_ID)[both])
        continued = decode_stepwise(model, *args, cache, start=2)
        full = model.decode(*args)
    torch.testing.assert_close(continued, full[:, 2:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("first_width", [1, 3])
def test_grouped_cache_follows_beams_reordered_within_sentences_and_sentences_leaving(first_width):
    """Beam search's cache: 3 rows per sentence share one row of encoder states and keep their keys/values in
    place while rows are reordered within their sentence (`visible` follows each row's history), past the
    buffer's first capacity; a sentence leaving mid-way. The first step has one row per sentence (as beam
    search decodes it) or all 3. Every step equals the full decoder run over each row's whole history."""
    model = build(False)
    gen = torch.Generator().manual_seed(9)
    group, steps = 3, 40
    src = random_tokens(gen, [6, 3, 5])
    sentence_lang = torch.tensor([0, 1, 1])
    with torch.no_grad():
        memory = model.encode(src, sentence_lang)
    mask = src != PAD_ID
    rows = torch.arange(3).repeat_interleave(first_width)  # the sentence of each row
    history = torch.full((len(rows), 1), BOS_ID)
    cache = model.new_cache(group)
    for t in range(steps):
        width = len(rows) // len(memory)
        lang = sentence_lang[rows]
        with torch.no_grad():
            step = model.decode(history[:, -1:], torch.full((len(rows), 1), t), lang, memory, mask, cache)
            full = model.decode(history, torch.arange(t + 1).expand_as(history), lang, memory[rows], mask[rows])
        torch.testing.assert_close(step[:, 0], full[:, -1], atol=ATOL, rtol=0)
        keep = torch.arange(len(memory)) if t != 20 else torch.tensor([0, 2])  # sentence 1 leaves at step 20
        beams = torch.randint(0, width, (len(keep), group), generator=gen)
        parents = (keep[:, None] * width + beams).flatten()
        cache.reorder(parents, keep if t == 20 else None)
        if t == 20:
            memory, mask, sentence_lang = memory[keep], mask[keep], sentence_lang[keep]
        rows = torch.arange(len(keep)).repeat_interleave(group)
        new = torch.randint(NUM_SPECIAL, VOCAB, (len(parents), 1), generator=gen)
        history = torch.cat([history[parents], new], dim=1)
    assert cache.steps == steps and cache.layers[0]["self_k"].size(1) >= steps * group > 32 * group


# --- rows that see nothing -------------------------------------------------------------------------------


@pytest.mark.parametrize("pre_norm", [False, True])
def test_row_with_empty_memory_mask_is_finite_and_ignores_the_encoder(pre_norm):
    model = build(pre_norm)
    gen = torch.Generator().manual_seed(7)
    src = random_tokens(gen, [6, 6])
    dec, pos = decoder_inputs(gen, 2, 5)
    lang = torch.tensor([0, 1])
    memory_mask = torch.ones(2, 6, dtype=torch.bool)
    memory_mask[1] = False
    with torch.no_grad():
        memory = model.encode(src, lang)
        out = model.decode(dec, pos, lang, memory, memory_mask)
        other = memory.clone()
        other[1] = torch.randn(6, memory.size(2), generator=gen) * 3
        out_other = model.decode(dec, pos, lang, other, memory_mask)
        logits = model(src, lang, dec, pos, lang, memory_mask=memory_mask)
        alone = model.decode(dec[1:], pos[1:], lang[1:], other[1:], memory_mask[1:])
    assert torch.isfinite(out).all() and torch.isfinite(logits).all()
    torch.testing.assert_close(out_other, out, atol=ATOL, rtol=0)
    torch.testing.assert_close(alone[0], out[1], atol=ATOL, rtol=0)  # and it does not depend on the batch


# --- outputs and embeddings ------------------------------------------------------------------------------


def test_output_mask_selects_the_full_logits():
    model = build()
    gen = torch.Generator().manual_seed(8)
    src = random_tokens(gen, [6, 3, 5])
    dec, pos = decoder_inputs(gen, 3, 5)
    lang = torch.tensor([0, 1, 0])
    output_mask = torch.rand(3, 5, generator=gen) < 0.5
    output_mask[0, 0] = True
    with torch.no_grad():
        full = model(src, lang, dec, pos, lang)
        some = model(src, lang, dec, pos, lang, output_mask=output_mask)
    assert full.shape == (3, 5, VOCAB)
    assert some.shape == (int(output_mask.sum()), VOCAB)
    torch.testing.assert_close(some, full[output_mask], atol=ATOL, rtol=0)


def test_output_projection_is_tied_to_the_token_embeddings():
    model = build()
    vocab, dim = model.cfg.vocab_size, model.cfg.embed_dim
    per_token = [name for name, p in model.named_parameters() if vocab in p.shape]
    assert sorted(per_token) == ["embed.tokens.weight", "output_bias"]  # no separate output matrix
    hidden = torch.randn(3, 4, dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        model.output_bias.normal_()
        expected = hidden @ model.embed.tokens.weight.T + model.output_bias
        torch.testing.assert_close(model.logits(hidden), expected, atol=ATOL, rtol=1e-5)
        before = model.logits(hidden)
        model.embed.tokens.weight[7] *= 3.0
        after = model.logits(hidden)
    changed = (after - before).abs().amax(dim=(0, 1)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [7]
    torch.testing.assert_close(after[..., 7] - model.output_bias[7], 3 * (before[..., 7] - model.output_bias[7]))


# --- presets ---------------------------------------------------------------------------------------------


def test_presets_build_with_the_documented_sizes():
    assert set(PRESETS) == {"tiny", "small", "base", "paper"}
    for preset in (tiny, small):
        cfg = preset()
        cfg.vocab_size, cfg.num_langs = 8000, 2
        model = MassModel(cfg)
        assert model.embed.tokens.weight.shape == (8000, cfg.embed_dim)
        assert len(model.encoder_layers) == cfg.encoder_layers and len(model.decoder_layers) == cfg.decoder_layers
        if preset is small:
            assert 9_000_000 < count_parameters(model) < 10_000_000
    b, p = base(), paper()
    assert (b.embed_dim, b.num_heads, b.ffn_dim, b.encoder_layers, b.decoder_layers) == (512, 8, 2048, 6, 6)
    assert (p.embed_dim, p.num_heads, p.ffn_dim, p.encoder_layers, p.decoder_layers) == (1024, 8, 4096, 6, 6)
    for cfg in (tiny(), small(), b, p):
        assert cfg.vocab_size == 0 and cfg.embed_dim % cfg.num_heads == 0
    with pytest.raises(ValueError):
        MassModel(tiny())  # the vocabulary size must be set


def test_positions_beyond_max_positions_raise():
    model = build()
    tokens = torch.full((1, model.cfg.max_positions + 1), NUM_SPECIAL)
    with pytest.raises(ValueError):
        model.encode(tokens, torch.zeros(1, dtype=torch.long))


# --- training --------------------------------------------------------------------------------------------


def greedy_decode(model: MassModel, sources: list[list[int]], lang: int, max_len: int) -> list[list[int]]:
    """Greedy search with the KV cache; each output stops before its first EOS."""
    batch = seq2seq_batch(sources, [[]] * len(sources), lang, lang)
    num = len(sources)
    langs = batch.src_lang
    with torch.no_grad():
        memory = model.encode(batch.src_tokens, langs)
        cache = model.new_cache()
        token = torch.full((num, 1), BOS_ID)
        outputs = []
        for t in range(max_len):
            hidden = model.decode(token, torch.full((num, 1), t), langs, memory, batch.memory_mask, cache)
            token = model.logits(hidden).argmax(dim=-1)
            outputs.append(token)
    results = []
    for row in torch.cat(outputs, dim=1).tolist():
        results.append(row[: row.index(EOS_ID)] if EOS_ID in row else row)
    return results


@pytest.mark.slow
def test_tiny_model_learns_to_copy():
    real = 20
    vocab = NUM_SPECIAL + real
    rng = random.Random(0)

    def sample() -> list[int]:
        return [rng.randrange(NUM_SPECIAL, vocab) for _ in range(rng.randint(3, 8))]

    held_out = [sample() for _ in range(200)]
    unseen = {tuple(s) for s in held_out}
    model = build(vocab=vocab, seed=10).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(250):
        seqs = [s for s in (sample() for _ in range(48)) if tuple(s) not in unseen]
        loss, stats = seq2seq_loss(model, seq2seq_batch(seqs, seqs, 0, 0))
        optimizer.zero_grad()
        (loss / stats["tokens"]).backward()
        optimizer.step()
        losses.append(stats["nll"] / stats["tokens"])
    model.eval()
    copies = greedy_decode(model, held_out, lang=0, max_len=10)
    accuracy = sum(c == s for c, s in zip(copies, held_out, strict=True)) / len(held_out)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 2.5  # about log(25) at the start
    assert last < first / 10, (first, last)
    assert accuracy >= 0.9, accuracy


def test_mass_loss_falls_on_a_fixed_batch():
    vocab = 40
    # Structured sentences: arithmetic progressions over the real subwords, so spans are predictable.
    rng = random.Random(1)
    sentences = []
    for _ in range(32):
        start, step, length = rng.randrange(vocab - NUM_SPECIAL), rng.randint(1, 3), rng.randint(6, 16)
        sentences.append([NUM_SPECIAL + (start + step * i) % (vocab - NUM_SPECIAL) for i in range(length)])
    lengths = torch.tensor([len(s) for s in sentences])
    tokens = torch.zeros(len(sentences), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(sentences):
        tokens[i, : len(s)] = torch.tensor(s)
    lang = torch.arange(len(sentences)) % 2
    batch = mass_batch(tokens, lengths, lang, MaskConfig(), vocab, torch.Generator().manual_seed(2))
    model = build(vocab=vocab, seed=11).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, stats = seq2seq_loss(model, batch)
        optimizer.zero_grad()
        (loss / stats["tokens"]).backward()
        optimizer.step()
        losses.append(stats["nll"] / stats["tokens"])
    assert losses[0] > 3.0  # about log(40)
    assert losses[-1] < losses[0] / 5, losses
