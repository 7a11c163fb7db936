"""MASS masking: pure functions on tensors, no I/O.

For a sentence x_1..x_m, MASS hides k = round(ratio * m) tokens from the encoder and asks the decoder
to predict exactly those. Everything is decided *per sentence* (the original drew k and the span start
per batch, from the first sentence's length). The variants the paper studies are config values:

- `scheme="span"`: one contiguous span (MASS); `"discrete"`: k positions scattered at random.
- `decoder_input="fragment"`: the decoder sees only the k masked positions (compact: half the tokens);
  `"full"`: every position, [MASK] outside the span (the paper's figure); `"feed"`: every position with
  the true previous token, so the decoder also gets the tokens the encoder saw (the paper's ablation).
- `span_tokens=1` is BERT's masked LM; `ratio=1.0` is a standard language model.

`noisy` is the other corruption unsupervised MT uses: the denoising auto-encoder of Lample et al. (2018)
and XLM's `--ae_steps` (local shuffle, dropped and blanked tokens; the decoder rebuilds the whole sentence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mass.batch import Batch
from mass.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID

SCHEMES = ("span", "discrete")
DECODER_INPUTS = ("fragment", "full", "feed")


@dataclass
class MaskConfig:
    """How MASS masks a sentence.

    Attributes:
        ratio: fraction of the sentence to mask, k = round(ratio * m), at least 1 (1.0 gives k = m).
        span_tokens: if > 0, a fixed k = min(span_tokens, m) instead of the ratio (1 = BERT-like).
        scheme: "span" (contiguous) or "discrete" (same count, scattered).
        decoder_input: "fragment", "full" or "feed" (see the module docstring).
        mask_prob: probability that a masked encoder token becomes [MASK].
        random_prob: probability that it becomes a random real subword (the rest stay unchanged).
        first_prob: probability that the span starts at the first token.
        last_prob: probability that the span ends at the last token (the rest: a uniform start).
    """

    ratio: float = 0.5
    span_tokens: int = 0
    scheme: str = "span"
    decoder_input: str = "fragment"
    mask_prob: float = 0.8
    random_prob: float = 0.1
    first_prob: float = 0.2
    last_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"mask.scheme must be one of {SCHEMES}, not {self.scheme!r}")
        if self.decoder_input not in DECODER_INPUTS:
            raise ValueError(f"mask.decoder_input must be one of {DECODER_INPUTS}, not {self.decoder_input!r}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"mask.ratio must be in (0, 1], not {self.ratio}")
        if self.mask_prob + self.random_prob > 1.0 or self.first_prob + self.last_prob > 1.0:
            raise ValueError("mask probabilities must sum to at most 1")


@dataclass
class NoiseConfig:
    """Denoising auto-encoder noise, applied in this order (XLM's `--word_shuffle/dropout/blank`).

    Attributes:
        shuffle: local shuffle: token i is sorted by i + U(0, shuffle), so it moves fewer than `shuffle`
            places (0 or 1: no shuffle).
        drop: probability that a token is removed (a sentence keeps at least one).
        blank: probability that a kept token becomes [MASK].
    """

    shuffle: float = 3.0
    drop: float = 0.1
    blank: float = 0.1

    def __post_init__(self) -> None:
        if self.shuffle < 0 or not (0.0 <= self.drop < 1.0 and 0.0 <= self.blank <= 1.0):
            raise ValueError("noise needs shuffle >= 0, 0 <= drop < 1 and 0 <= blank <= 1")


def noisy(sentence: Tensor, cfg: NoiseConfig, generator: torch.Generator) -> Tensor:
    """A corrupted copy of one sentence (1-D, no BOS/EOS) for the denoising auto-encoder."""
    length = sentence.numel()
    keys = torch.arange(length, dtype=torch.float) + torch.rand(length, generator=generator) * cfg.shuffle
    out = sentence[keys.argsort(stable=True)] if cfg.shuffle > 1 else sentence
    keep = torch.rand(length, generator=generator) >= cfg.drop
    if not bool(keep.any()):
        keep[torch.randint(length, (1,), generator=generator)] = True
    out = out[keep]
    return torch.where(torch.rand(out.numel(), generator=generator) < cfg.blank, MASK_ID, out)


def span_lengths(lengths: Tensor, cfg: MaskConfig) -> Tensor:
    """k per sentence: round half up of ratio * m, clamped to [1, m]."""
    if cfg.span_tokens > 0:
        k = torch.full_like(lengths, cfg.span_tokens)
    else:
        k = torch.floor(lengths.double() * cfg.ratio + 0.5 + 1e-9).long()  # 0.7 * 45 is 31.4999... in binary
    return torch.minimum(k.clamp(min=1), lengths)


def choose_masked(lengths: Tensor, max_len: int, cfg: MaskConfig, generator: torch.Generator) -> Tensor:
    """(B, L) bool: the positions each sentence hides from the encoder."""
    batch = lengths.size(0)
    k = span_lengths(lengths, cfg)
    pos = torch.arange(max_len)[None, :]
    if cfg.scheme == "discrete":
        scores = torch.rand(batch, max_len, generator=generator).masked_fill(pos >= lengths[:, None], 2.0)
        rank = scores.argsort(dim=1).argsort(dim=1)
        return rank < k[:, None]
    slots = lengths - k  # the span may start at 0..slots
    u = torch.rand(batch, generator=generator)
    uniform = (torch.rand(batch, generator=generator) * (slots + 1).double()).long().clamp(max=slots)
    start = torch.where(u < cfg.first_prob, 0, torch.where(u < cfg.first_prob + cfg.last_prob, slots, uniform))
    return (pos >= start[:, None]) & (pos < (start + k)[:, None])


def corrupt(tokens: Tensor, masked: Tensor, cfg: MaskConfig, vocab_size: int, generator: torch.Generator) -> Tensor:
    """Replace masked tokens: mask_prob [MASK], random_prob a random real subword, else unchanged."""
    u = torch.rand(tokens.shape, generator=generator)
    random_ids = torch.randint(NUM_SPECIAL, vocab_size, tokens.shape, generator=generator)
    out = torch.where(masked & (u < cfg.mask_prob), MASK_ID, tokens)
    use_random = masked & (u >= cfg.mask_prob) & (u < cfg.mask_prob + cfg.random_prob)
    return torch.where(use_random, random_ids, out)


def mass_batch(
    tokens: Tensor,
    lengths: Tensor,
    lang: Tensor,
    cfg: MaskConfig,
    vocab_size: int,
    generator: torch.Generator,
) -> Batch:
    """Turn a batch of sentences into a MASS training batch.

    Args:
        tokens: (B, L) sentences without BOS/EOS, right-padded with PAD.
        lengths: (B,) sentence lengths m (all >= 1).
        lang: (B,) language ids; the decoder predicts the same language.
        cfg: the masking variant.
        vocab_size: random replacements are drawn from [NUM_SPECIAL, vocab_size).
        generator: seeded RNG; the same seed gives the same masks (training and validation alike).

    Returns:
        A `Batch`: encoder input `x' </s>` (S = L + 1), decoder input/positions/targets for the masked
        positions only (fragment) or for every position (full, feed), and the memory mask hiding the
        masked encoder states from the decoder.
    """
    batch, max_len = tokens.shape
    masked = choose_masked(lengths, max_len, cfg, generator)
    real = torch.arange(max_len)[None, :] < lengths[:, None]
    corrupted = corrupt(tokens, masked, cfg, vocab_size, generator)

    # Encoder: corrupted sentence followed by </s> at position m.
    src = torch.cat([corrupted, torch.full((batch, 1), PAD_ID)], dim=1)
    src[torch.arange(batch), lengths] = EOS_ID
    memory_mask = src != PAD_ID
    memory_mask[:, :max_len] &= ~masked

    # The decoder at position p reads x_{p-1} (or <s> when p = 0) and predicts x_p.
    previous = torch.cat([torch.full((batch, 1), BOS_ID), tokens[:, :-1]], dim=1)
    if cfg.decoder_input == "fragment":
        k = masked.sum(dim=1)
        width = int(k.max())
        # Masked positions in increasing order: unmasked ones are pushed past the end before sorting.
        order = torch.where(masked, torch.arange(max_len), max_len + torch.arange(max_len)).sort(dim=1).values
        positions = order[:, :width]
        valid = torch.arange(width)[None, :] < k[:, None]
        positions = torch.where(valid, positions, 0)
        dec_tokens = torch.where(valid, previous.gather(1, positions), PAD_ID)
        target = torch.where(valid, tokens.gather(1, positions), PAD_ID)
    else:
        positions = torch.arange(max_len).expand(batch, max_len).clone()
        shown = previous if cfg.decoder_input == "feed" else torch.where(masked, previous, MASK_ID)
        dec_tokens = torch.where(real, shown, PAD_ID)
        target = torch.where(masked, tokens, PAD_ID)
    return Batch(
        src_tokens=src,
        src_lang=lang,
        memory_mask=memory_mask,
        dec_tokens=dec_tokens,
        dec_positions=positions,
        tgt_lang=lang,
        target=target,
    )
