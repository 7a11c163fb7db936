"""Losses: (model, batch) -> (summed loss, stats). The trainer divides by the update's token count.

Summed (not averaged) losses make gradient accumulation and multi-process training exact: the update
is the mean over every target token of every micro-batch on every process, whatever their sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mass.batch import Batch, pad_sequences, seq2seq_batch
from mass.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from mass.generate import greedy_search
from mass.model import MassModel


def seq2seq_loss(model: MassModel, batch: Batch, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """Token cross-entropy on the positions that have a target, summed.

    The output projection (the largest matmul of a small model) runs only on those positions: for MASS
    that is the span, about half of the sentence.

    Returns:
        (loss_sum, stats) where stats has `nll` (summed, without smoothing) and `tokens`.
    """
    keep = batch.target != PAD_ID
    logits = model(
        batch.src_tokens,
        batch.src_lang,
        batch.dec_tokens,
        batch.dec_positions,
        batch.tgt_lang,
        batch.memory_mask,
        output_mask=keep,
    ).float()  # (N, V) over the N target tokens only
    target = batch.target[keep]
    nll = F.cross_entropy(logits, target, reduction="sum")
    if label_smoothing > 0:
        loss = F.cross_entropy(logits, target, reduction="sum", label_smoothing=label_smoothing)
    else:
        loss = nll
    return loss, {"nll": float(nll.detach()), "tokens": float(target.numel())}


@torch.no_grad()
def evaluate_loss(model: MassModel, batches, device: torch.device | str = "cpu") -> dict[str, float]:
    """Summed NLL and token count over an iterable of batches, in eval mode (restores the mode)."""
    was_training = model.training
    model.eval()
    nll, tokens = 0.0, 0.0
    try:
        for batch in batches:
            _, stats = seq2seq_loss(model, batch.to(device))
            nll += stats["nll"]
            tokens += stats["tokens"]
    finally:
        model.train(was_training)
    return {"nll": nll, "tokens": tokens}


@torch.no_grad()
def back_translate(
    model: MassModel,
    sentences: list[list[int]],
    lang: int,
    via_lang: int,
    max_len_a: float = 1.3,
    max_len_b: int = 5,
    banned: Tensor | None = None,
) -> Batch:
    """On-the-fly back-translation: the batch that teaches the model to recover `sentences` from its own
    translation of them into `via_lang`.

    The translation is greedy, in eval mode (no dropout) and without gradients, so the loss flows only
    through the reconstruction; the model's train/eval mode is restored afterwards.

    Args:
        sentences: monolingual sentences in language `lang`, without BOS/EOS.
        banned: (V,) bool, subwords the translation may not contain (those never seen in `via_lang`).
    """
    from mass.inference import make_decode_step

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        limit = model.cfg.max_positions - 1
        sentences = [list(s[:limit]) for s in sentences]
        src = pad_sequences([s + [EOS_ID] for s in sentences]).to(device)
        memory = model.encode(src, torch.full((len(sentences),), lang, device=device))
        via = torch.full((len(sentences),), via_lang, device=device)
        step = make_decode_step(model, memory, src != PAD_ID, via, banned=banned)
        max_len = [min(int(max_len_a * len(s) + max_len_b), limit) for s in sentences]
        translations = greedy_search(
            step, len(sentences), bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_len, min_len=1, device=device
        )
    finally:
        model.train(was_training)
    return seq2seq_batch([h.tokens for h in translations], sentences, via_lang, lang)
