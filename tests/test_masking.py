"""Invariants of the MASS objective (`mass.masking`), checked per sentence on random padded batches.

Frequency tests draw thousands of sentences from seeded generators and allow several standard deviations,
so they are deterministic and far from their tolerance.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from mass.batch import Batch
from mass.data.streams import dae_collate
from mass.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID
from mass.masking import MaskConfig, NoiseConfig, choose_masked, mass_batch, noisy, span_lengths

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 100


def sentences(
    num: int, min_len: int = 1, max_len: int = 40, vocab: int = VOCAB, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num, L) random real subwords right-padded with PAD, and their lengths (in [min_len, max_len])."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (num,), generator=gen)
    width = int(lengths.max())
    tokens = torch.randint(NUM_SPECIAL, vocab, (num, width), generator=gen)
    tokens[torch.arange(width)[None, :] >= lengths[:, None]] = PAD_ID
    return tokens, lengths


def make(
    cfg: MaskConfig, num: int = 500, seed: int = 1, vocab: int = VOCAB, **kwargs
) -> tuple[torch.Tensor, torch.Tensor, Batch]:
    tokens, lengths = sentences(num, vocab=vocab, **kwargs)
    lang = torch.arange(num) % 2
    batch = mass_batch(tokens, lengths, lang, cfg, vocab, torch.Generator().manual_seed(seed))
    return tokens, lengths, batch


def masked_from_batch(batch: Batch, lengths: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the positions hidden from the decoder inside each sentence."""
    width = batch.src_tokens.size(1) - 1
    real = torch.arange(width)[None, :] < lengths[:, None]
    return real & ~batch.memory_mask[:, :width]


def expected_k(ratio: str, m: int) -> int:
    """Round half up of ratio * m with the ratio read as an exact decimal, clamped to [1, m]."""
    return max(1, min(m, math.floor(Fraction(ratio) * m + Fraction(1, 2))))


def previous_tokens(tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.full((tokens.size(0), 1), BOS_ID), tokens[:, :-1]], dim=1)


# --- span length -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ["0.1", "0.2", "0.3", "0.35", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"])
def test_span_length_is_rounded_half_up_ratio_of_each_sentence(ratio):
    lengths = torch.arange(1, 41)
    k = span_lengths(lengths, MaskConfig(ratio=float(ratio)))
    assert k.tolist() == [expected_k(ratio, m) for m in range(1, 41)]

    # And mass_batch hides exactly that many tokens from every sentence of a mixed-length batch.
    _, lens, batch = make(MaskConfig(ratio=float(ratio)), num=300)
    assert masked_from_batch(batch, lens).sum(dim=1).tolist() == [expected_k(ratio, m) for m in lens.tolist()]


def test_span_length_of_half_rounds_up_odd_lengths():
    lengths = torch.tensor([1, 2, 3, 5, 7, 9, 10, 39])
    assert span_lengths(lengths, MaskConfig(ratio=0.5)).tolist() == [1, 1, 2, 3, 4, 5, 5, 20]


def test_span_length_is_exact_for_decimal_ratios_on_long_sentences():
    # Sentences go up to max_positions (256); 0.7 * 45 = 31.5 must round up to 32 like 0.7 * 5 = 3.5 -> 4.
    lengths = torch.arange(1, 256)
    for ratio in ["0.15", "0.35", "0.45", "0.55", "0.65", "0.7"]:
        k = span_lengths(lengths, MaskConfig(ratio=float(ratio)))
        wrong = [(m, got) for m, got in zip(lengths.tolist(), k.tolist(), strict=True) if got != expected_k(ratio, m)]
        assert not wrong, f"ratio {ratio}: (m, k) pairs not rounded half up: {wrong}"


def test_span_tokens_one_masks_one_token_and_ratio_one_masks_everything():
    lengths = torch.arange(1, 41)
    assert span_lengths(lengths, MaskConfig(span_tokens=1)).tolist() == [1] * 40
    assert span_lengths(lengths, MaskConfig(span_tokens=5)).tolist() == [min(5, m) for m in range(1, 41)]
    assert span_lengths(lengths, MaskConfig(ratio=1.0)).tolist() == list(range(1, 41))


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9, 1.0])
def test_span_is_contiguous_and_inside_the_sentence(ratio):
    tokens, lengths = sentences(2000, seed=3)
    masked = choose_masked(lengths, tokens.size(1), MaskConfig(ratio=ratio), torch.Generator().manual_seed(4))
    pos = torch.arange(tokens.size(1))[None, :]
    assert not (masked & (pos >= lengths[:, None])).any()
    k = span_lengths(lengths, MaskConfig(ratio=ratio))
    assert masked.sum(dim=1).tolist() == k.tolist()
    # Contiguous: the last masked position is first + k - 1.
    first = torch.where(masked, pos, 10**6).min(dim=1).values
    last = torch.where(masked, pos, -1).max(dim=1).values
    assert torch.equal(last - first + 1, k)


# --- span start frequencies ------------------------------------------------------------------------------


def test_span_start_is_first_20_last_20_uniform_60_percent():
    num, m, k = 20000, 20, 10
    lengths = torch.full((num,), m)
    masked = choose_masked(lengths, 32, MaskConfig(ratio=0.5), torch.Generator().manual_seed(5))
    start = masked.float().argmax(dim=1)  # first masked position
    slots = m - k + 1
    freq = torch.bincount(start, minlength=32).double() / num
    assert freq[slots:].sum() == 0
    uniform = 0.6 / slots
    expected = torch.full((slots,), uniform, dtype=torch.float64)
    expected[0] += 0.2
    expected[-1] += 0.2
    sigma = (expected * (1 - expected) / num).sqrt()
    assert ((freq[:slots] - expected).abs() < 5 * sigma).all(), (freq[:slots], expected)


def test_span_start_follows_asymmetric_first_and_last_probabilities():
    num, m, k = 20000, 20, 10
    cfg = MaskConfig(ratio=0.5, first_prob=0.5, last_prob=0.1)
    masked = choose_masked(torch.full((num,), m), m, cfg, torch.Generator().manual_seed(25))
    start = masked.float().argmax(dim=1)
    slots = m - k + 1
    for value, p in [(0, 0.5 + 0.4 / slots), (slots - 1, 0.1 + 0.4 / slots), (5, 0.4 / slots)]:
        freq = float((start == value).double().mean())
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / num), (value, freq, p)


def test_span_start_is_drawn_per_sentence_in_mixed_length_batches():
    # The original drew one start for the whole batch; here each sentence uses its own length m.
    num = 20000
    tokens, lengths = sentences(num, seed=6)
    masked = choose_masked(lengths, tokens.size(1), MaskConfig(ratio=0.5), torch.Generator().manual_seed(7))
    pos = torch.arange(tokens.size(1))[None, :]
    slots = (lengths - span_lengths(lengths, MaskConfig(ratio=0.5)) + 1).double()
    at_first = masked[:, 0].double()
    at_last = masked[torch.arange(num), lengths - 1].double()
    # P(start = 0) = P(end = m) = 0.2 + 0.6 / slots, plus the other 0.2 when the span covers all starts.
    p = 0.2 + 0.6 / slots + 0.2 * (slots == 1)
    sigma = (p * (1 - p)).sum().sqrt() / num
    assert abs(at_first.mean() - p.mean()) < 5 * sigma
    assert abs(at_last.mean() - p.mean()) < 5 * sigma
    # A uniform start also lands strictly inside: some spans touch neither end of a long sentence.
    long = lengths >= 10
    inside = ~masked[:, 0] & ~masked[torch.arange(num), lengths - 1]
    assert inside[long].double().mean() > 0.3
    assert not (masked & (pos >= lengths[:, None])).any()


# --- encoder input ---------------------------------------------------------------------------------------


def test_masked_encoder_tokens_are_80_mask_10_random_10_unchanged():
    vocab = 10000  # a random draw rarely equals the original token: 1 / (vocab - NUM_SPECIAL)
    tokens, lengths, batch = make(MaskConfig(), num=4000, vocab=vocab, seed=8)
    width = tokens.size(1)
    masked = masked_from_batch(batch, lengths)
    enc = batch.src_tokens[:, :width]
    n = int(masked.sum())
    assert n > 30000
    is_mask = enc[masked] == MASK_ID
    same = enc[masked] == tokens[masked]
    random = ~is_mask & ~same
    p_collide = 1 / (vocab - NUM_SPECIAL)
    for observed, p in [(is_mask, 0.8), (random, 0.1 * (1 - p_collide)), (same, 0.1 + 0.1 * p_collide)]:
        freq = float(observed.double().mean())
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (freq, p)
    # Random replacements are real subwords of the vocabulary, never special ids.
    replaced = enc[masked][random]
    assert (replaced >= NUM_SPECIAL).all() and (replaced < vocab).all()


def test_random_replacements_cover_all_real_subwords_and_no_special_id():
    vocab = 9  # real subwords 5..8
    cfg = MaskConfig(mask_prob=0.0, random_prob=1.0)
    tokens, lengths, batch = make(cfg, num=500, vocab=vocab, seed=9)
    masked = masked_from_batch(batch, lengths)
    replaced = batch.src_tokens[:, : tokens.size(1)][masked]
    assert sorted(set(replaced.tolist())) == list(range(NUM_SPECIAL, vocab))


def test_encoder_input_keeps_unmasked_tokens_then_eos_then_padding():
    tokens, lengths, batch = make(MaskConfig(), num=1000, seed=10)
    num, width = tokens.shape
    assert batch.src_tokens.shape == (num, width + 1)
    masked = masked_from_batch(batch, lengths)
    real = torch.arange(width)[None, :] < lengths[:, None]
    enc = batch.src_tokens[:, :width]
    visible = real & ~masked
    assert torch.equal(enc[visible], tokens[visible])
    assert (batch.src_tokens[torch.arange(num), lengths] == EOS_ID).all()
    after = torch.arange(width + 1)[None, :] > lengths[:, None]
    assert (batch.src_tokens[after] == PAD_ID).all()
    assert (enc[real] != PAD_ID).all()
    assert torch.equal(batch.src_lang, torch.arange(num) % 2)
    assert torch.equal(batch.tgt_lang, batch.src_lang)


def test_memory_mask_hides_exactly_the_masked_positions_and_padding():
    tokens, lengths, batch = make(MaskConfig(), num=1000, seed=11)
    num, width = tokens.shape
    # The masked set, read from the decoder side: the fragment's target positions.
    predicted = torch.zeros(num, width + 1, dtype=torch.bool)
    rows = torch.arange(num)[:, None].expand_as(batch.dec_positions)
    keep = batch.target != PAD_ID
    predicted[rows[keep], batch.dec_positions[keep]] = True
    pos = torch.arange(width + 1)[None, :]
    expected = (pos <= lengths[:, None]) & ~predicted  # the sentence and its EOS, minus the span
    assert torch.equal(batch.memory_mask, expected)
    # Every corrupted sentence token is hidden from the decoder.
    real = torch.arange(width)[None, :] < lengths[:, None]
    changed = real & (batch.src_tokens[:, :width] != tokens)
    assert not (changed & batch.memory_mask[:, :width]).any()


# --- decoder input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["span", "discrete"])
def test_fragment_decoder_reads_shifted_span_at_original_positions(scheme):
    tokens, lengths, batch = make(MaskConfig(scheme=scheme), num=1000, seed=13)
    masked = masked_from_batch(batch, lengths)
    prev = previous_tokens(tokens)
    k = masked.sum(dim=1)
    assert batch.dec_tokens.size(1) == int(k.max())
    for i in range(tokens.size(0)):
        span = masked[i].nonzero().flatten()  # increasing order
        n = len(span)
        assert torch.equal(batch.dec_positions[i, :n], span)
        assert torch.equal(batch.dec_tokens[i, :n], prev[i, span])
        assert torch.equal(batch.target[i, :n], tokens[i, span])
        assert (batch.dec_tokens[i, n:] == PAD_ID).all() and (batch.target[i, n:] == PAD_ID).all()
        if span[0] == 0:
            assert batch.dec_tokens[i, 0] == BOS_ID
    # The loss covers exactly the masked tokens.
    assert torch.equal((batch.target != PAD_ID).sum(dim=1), k)


def test_encoder_visible_and_decoder_target_positions_partition_the_sentence():
    tokens, lengths, batch = make(MaskConfig(scheme="span"), num=1000, seed=14)
    width = tokens.size(1)
    real = torch.arange(width)[None, :] < lengths[:, None]
    visible = batch.memory_mask[:, :width] & real  # (the EOS at position m is visible too)
    predicted = torch.zeros_like(visible)
    rows = torch.arange(tokens.size(0))[:, None].expand_as(batch.dec_positions)
    keep = batch.target != PAD_ID
    predicted[rows[keep], batch.dec_positions[keep]] = True
    assert not (visible & predicted).any()
    assert torch.equal(visible | predicted, real)


def test_full_decoder_input_shows_mask_outside_the_span():
    tokens, lengths, batch = make(MaskConfig(decoder_input="full"), num=1000, seed=15)
    num, width = tokens.shape
    masked = masked_from_batch(batch, lengths)
    real = torch.arange(width)[None, :] < lengths[:, None]
    assert torch.equal(batch.dec_positions, torch.arange(width).expand(num, width))
    prev = previous_tokens(tokens)
    assert torch.equal(batch.dec_tokens[masked], prev[masked])
    assert (batch.dec_tokens[real & ~masked] == MASK_ID).all()
    assert (batch.dec_tokens[~real] == PAD_ID).all()
    assert torch.equal(batch.target[masked], tokens[masked])
    assert (batch.target[~masked] == PAD_ID).all()


def test_feed_decoder_input_shows_every_previous_token():
    tokens, lengths, batch = make(MaskConfig(decoder_input="feed"), num=1000, seed=16)
    num, width = tokens.shape
    masked = masked_from_batch(batch, lengths)
    real = torch.arange(width)[None, :] < lengths[:, None]
    assert torch.equal(batch.dec_positions, torch.arange(width).expand(num, width))
    assert torch.equal(batch.dec_tokens[real], previous_tokens(tokens)[real])
    assert (batch.dec_tokens[~real] == PAD_ID).all()
    assert torch.equal(batch.target[masked], tokens[masked])
    assert (batch.target[~masked] == PAD_ID).all()


# --- discrete scheme -------------------------------------------------------------------------------------


def test_discrete_masks_k_scattered_positions_uniformly():
    num, m = 10000, 20
    lengths = torch.full((num,), m)
    cfg = MaskConfig(scheme="discrete")
    masked = choose_masked(lengths, 25, cfg, torch.Generator().manual_seed(17))
    assert (masked.sum(dim=1) == 10).all()
    assert not masked[:, m:].any()
    pos = torch.arange(25)[None, :]
    first = torch.where(masked, pos, 10**6).min(dim=1).values
    last = torch.where(masked, pos, -1).max(dim=1).values
    contiguous = last - first + 1 == 10
    assert contiguous.double().mean() < 0.01  # 11 of C(20, 10) = 184756 subsets are contiguous
    # Every position is equally likely: k / m = 0.5.
    freq = masked[:, :m].double().mean(dim=0)
    assert ((freq - 0.5).abs() < 5 * math.sqrt(0.25 / num)).all()


# --- the two extremes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder_input", ["fragment", "full", "feed"])
@pytest.mark.parametrize("scheme", ["span", "discrete"])
def test_span_tokens_one_gives_exactly_one_target_per_sentence(scheme, decoder_input):
    cfg = MaskConfig(span_tokens=1, scheme=scheme, decoder_input=decoder_input)
    tokens, lengths, batch = make(cfg, num=500, seed=18)
    assert ((batch.target != PAD_ID).sum(dim=1) == 1).all()
    assert (masked_from_batch(batch, lengths).sum(dim=1) == 1).all()
    if decoder_input == "fragment":
        assert batch.dec_tokens.shape == (500, 1)


def test_ratio_one_is_a_language_model():
    cfg = MaskConfig(ratio=1.0)
    tokens, lengths, batch = make(cfg, num=500, seed=19)
    num, width = tokens.shape
    # The decoder sees only the encoder's EOS state.
    eos = torch.arange(width + 1)[None, :] == lengths[:, None]
    assert torch.equal(batch.memory_mask, eos)
    # Decoder: <s> x_1 .. x_{m-1} at positions 0..m-1, predicting x_1 .. x_m.
    assert torch.equal(batch.dec_tokens, torch.where(tokens != PAD_ID, previous_tokens(tokens), PAD_ID))
    assert torch.equal(batch.target, tokens)
    real = tokens != PAD_ID
    assert torch.equal(batch.dec_positions[real], torch.arange(width).expand(num, width)[real])
    # With every token replaced by [MASK], the encoder reads no real token at all.
    cfg = MaskConfig(ratio=1.0, mask_prob=1.0, random_prob=0.0)
    tokens, _, batch = make(cfg, num=500, seed=19)
    real = tokens != PAD_ID
    assert (batch.src_tokens[:, :width][real] == MASK_ID).all()


# --- determinism and validation --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["span", "discrete"])
def test_same_seed_same_batch_and_other_seed_differs(scheme):
    cfg = MaskConfig(scheme=scheme)
    _, _, a = make(cfg, num=200, seed=20)
    _, _, b = make(cfg, num=200, seed=20)
    _, _, c = make(cfg, num=200, seed=21)
    for name in ("src_tokens", "memory_mask", "dec_tokens", "dec_positions", "target"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.memory_mask, c.memory_mask)
    assert not torch.equal(a.src_tokens, c.src_tokens)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scheme": "spans"},
        {"decoder_input": "partial"},
        {"ratio": 0.0},
        {"ratio": -0.5},
        {"ratio": 1.01},
        {"mask_prob": 0.95, "random_prob": 0.1},
        {"first_prob": 0.6, "last_prob": 0.5},
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError):
        MaskConfig(**kwargs)


# --- denoising auto-encoder noise (`noisy`, the `dae` objective) ---


def _noisy_many(cfg: NoiseConfig, num: int = 2000, length: int = 20) -> list[tuple[list[int], list[int]]]:
    """(sentence, noisy copy) pairs of distinct tokens, so every output token names its source position."""
    gen = torch.Generator().manual_seed(3)
    sentence = torch.arange(NUM_SPECIAL, NUM_SPECIAL + length)
    return [(sentence.tolist(), noisy(sentence, cfg, gen).tolist()) for _ in range(num)]


def test_noise_shuffle_moves_tokens_fewer_than_k_places_and_keeps_them_all():
    pairs = _noisy_many(NoiseConfig(shuffle=3.0, drop=0.0, blank=0.0))
    moved = 0
    for sentence, out in pairs:
        assert sorted(out) == sentence  # a permutation
        shifts = [abs(out.index(tok) - i) for i, tok in enumerate(sentence)]
        assert max(shifts) < 3
        moved += sum(s > 0 for s in shifts)
    assert moved > 0.3 * len(pairs) * 20  # it really shuffles


def test_noise_without_shuffle_drop_and_blank_is_the_identity():
    assert all(out == sentence for sentence, out in _noisy_many(NoiseConfig(shuffle=0.0, drop=0.0, blank=0.0), 50))


def test_noise_drops_and_blanks_at_their_rates_and_keeps_order():
    pairs = _noisy_many(NoiseConfig(shuffle=0.0, drop=0.1, blank=0.2))
    kept = blanked = 0
    for sentence, out in pairs:
        real = [tok for tok in out if tok != MASK_ID]
        assert real == sorted(real) and set(real) <= set(sentence)  # dropped, not moved
        kept += len(out)
        blanked += len(out) - len(real)
    total = len(pairs) * 20
    assert abs(kept / total - 0.9) < 0.01
    assert abs(blanked / kept - 0.2) < 0.01


def test_noise_keeps_at_least_one_token():
    gen = torch.Generator().manual_seed(0)
    outs = [noisy(torch.tensor([7, 8]), NoiseConfig(shuffle=0.0, drop=0.99, blank=0.0), gen) for _ in range(200)]
    assert all(out.numel() >= 1 for out in outs)
    assert {tuple(out.tolist()) for out in outs} >= {(7,), (8,)}


def test_dae_batch_reconstructs_the_clean_sentence_from_the_noisy_one():
    array = [np.arange(NUM_SPECIAL, NUM_SPECIAL + n) for n in (3, 8, 5)]
    collate = dae_collate(array, lang_id=1, cfg=NoiseConfig(shuffle=3.0, drop=0.2, blank=0.2))
    batch = collate(np.arange(3), torch.Generator().manual_seed(0))
    for i, sentence in enumerate(array):
        src = batch.src_tokens[i][batch.src_tokens[i] != PAD_ID].tolist()
        assert src[-1] == EOS_ID and 1 <= len(src) - 1 <= len(sentence)
        assert set(src[:-1]) <= set(sentence.tolist()) | {MASK_ID}
        n = len(sentence)
        assert batch.dec_tokens[i, : n + 1].tolist() == [BOS_ID, *sentence.tolist()]
        assert batch.target[i, : n + 1].tolist() == [*sentence.tolist(), EOS_ID]
        assert batch.dec_positions[i, : n + 1].tolist() == list(range(n + 1))
    assert batch.src_lang.tolist() == batch.tgt_lang.tolist() == [1, 1, 1]
    assert bool((batch.memory_mask == (batch.src_tokens != PAD_ID)).all())


def test_invalid_noise_raises():
    with pytest.raises(ValueError, match="noise"):
        NoiseConfig(drop=1.0)
