"""The one batch type every objective trains on: encoder input, decoder input at given positions, targets.

MASS, fine-tuning and back-translation all reduce to this: they differ only in how they fill it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from mass.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    """A padded encoder-decoder batch (B sentences, S source and T target positions).

    Attributes:
        src_tokens: (B, S) encoder input, right-padded with PAD.
        src_lang: (B,) language id of the source.
        memory_mask: (B, S) bool, True where the decoder may attend to the encoder (not padding and, for
            MASS, not masked).
        dec_tokens: (B, T) decoder input, right-padded.
        dec_positions: (B, T) position id of each decoder input.
        tgt_lang: (B,) language id of the target.
        target: (B, T) token to predict at each decoder position; PAD where there is no loss.
    """

    src_tokens: Tensor
    src_lang: Tensor
    memory_mask: Tensor
    dec_tokens: Tensor
    dec_positions: Tensor
    tgt_lang: Tensor
    target: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    @property
    def num_target_tokens(self) -> int:
        return int((self.target != PAD_ID).sum())


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID, extra: int = 0) -> Tensor:
    """Right-pad token lists to (B, max_len + extra)."""
    width = max((len(s) for s in seqs), default=0) + extra
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def seq2seq_batch(
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    src_lang: int | Tensor,
    tgt_lang: int | Tensor,
) -> Batch:
    """An ordinary translation batch: encoder reads `src </s>`, decoder reads `<s> tgt`, predicts `tgt </s>`."""
    src = pad_sequences([list(s) + [EOS_ID] for s in sources])
    dec = pad_sequences([[BOS_ID] + list(t) for t in targets])
    target = pad_sequences([list(t) + [EOS_ID] for t in targets])
    batch_size = len(sources)
    return Batch(
        src_tokens=src,
        src_lang=_lang_tensor(src_lang, batch_size),
        memory_mask=src != PAD_ID,
        dec_tokens=dec,
        dec_positions=torch.arange(dec.size(1)).expand_as(dec).clone(),
        tgt_lang=_lang_tensor(tgt_lang, batch_size),
        target=target,
    )


def _lang_tensor(lang: int | Tensor, batch_size: int) -> Tensor:
    if isinstance(lang, Tensor):
        return lang.long()
    return torch.full((batch_size,), lang, dtype=torch.long)
