"""Losses: (model, batch) -> (summed loss, stats). The trainer divides by the update's token count.

Summed (not averaged) losses make gradient accumulation and multi-process training exact: the update
is the mean over every target token of every micro-batch on every process, whatever their sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mass.batch import Batch
from mass.data.tokenizer import PAD_ID
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
