"""Endless, resumable, shardable streams of batches: one per objective of the training schedule.

A stream's position is (epoch, cursor): enough to resume exactly. Batch order and masking depend only
on (seed, epoch, global batch index), never on the number of processes, so two processes reading
alternate batches see exactly what one process with gradient accumulation sees.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mass.batch import Batch, pad_sequences, seq2seq_batch
from mass.data.batching import filter_by_length, shard, token_budget_batches
from mass.data.binarize import TokenArray
from mass.errors import MassError
from mass.masking import MaskConfig, NoiseConfig, mass_batch, noisy

Collate = Callable[[np.ndarray, torch.Generator], Batch]


def batch_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch RNG that depends only on the batch's identity, so masking is reproducible anywhere."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + index)


class BatchStream:
    """Token-budget batches of `examples`, reshuffled each epoch, this process's share only.

    Args:
        lengths: (N,) length of every example (used to group similar lengths).
        examples: ids of the examples to use (after length filtering).
        max_tokens: token budget of one batch.
        seed: seeds batch order and per-batch RNG.
        collate: turns example ids and a batch RNG into a `Batch`.
        rank, world_size: this process's share of the batches.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        examples: np.ndarray,
        max_tokens: int,
        seed: int,
        collate: Collate,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(examples) == 0:
            raise ValueError("a training stream has no examples (check data.min_len / data.max_len)")
        self.lengths, self.examples = lengths, examples
        self.max_tokens, self.seed, self.collate = max_tokens, seed, collate
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0
        self._batches: list[np.ndarray] | None = None

    def _epoch_batches(self) -> list[np.ndarray]:
        if self._batches is None:
            order = token_budget_batches(self.lengths[self.examples], self.max_tokens, seed=self.seed, epoch=self.epoch)
            self._batches = shard([self.examples[b] for b in order], self.rank, self.world_size)
            if not self._batches:
                raise MassError(
                    f"{len(order)} batches cannot give each of {self.world_size} processes one: lower data.max_tokens"
                )
        return self._batches

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batches = self._epoch_batches()
        if self.cursor >= len(batches):
            self.epoch, self.cursor, self._batches = self.epoch + 1, 0, None
            batches = self._epoch_batches()
        ids = batches[self.cursor]
        generator = batch_generator(self.seed, self.epoch, self.cursor * self.world_size + self.rank)
        self.cursor += 1
        return self.collate(ids, generator)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self._batches = int(state["epoch"]), int(state["cursor"]), None


# Validation masks are drawn from this seed in training and in `mass evaluate` alike, so their MASS
# perplexities are comparable.
VALID_SEED = 12345


def fixed_batches(
    lengths: np.ndarray, examples: np.ndarray, max_tokens: int, seed: int, collate: Collate
) -> list[Batch]:
    """Validation batches: length-sorted, unshuffled, each masked with its own fixed seed.

    The same seeded masking is used at every evaluation, so validation MASS perplexity is comparable
    across steps and runs (the original evaluated with a different masking than it trained with).
    """
    order = token_budget_batches(lengths[examples], max_tokens, seed=seed, epoch=0, shuffle=False)
    return [collate(examples[b], batch_generator(seed, 0, i)) for i, b in enumerate(order)]


def kept_examples(lengths: np.ndarray, min_len: int, max_len: int, first_n: int = 0, limit: int = 0) -> np.ndarray:
    """Example ids within the length limits, from the first `first_n` examples, at most `limit` of them."""
    n = len(lengths) if first_n <= 0 else min(first_n, len(lengths))
    kept = filter_by_length(lengths[:n], min_len, max_len)
    return kept[:limit] if limit > 0 else kept


def mass_collate(array: TokenArray, lang_id: int, cfg: MaskConfig, vocab_size: int) -> Collate:
    """Monolingual sentences -> MASS batches."""

    def collate(ids: np.ndarray, generator: torch.Generator) -> Batch:
        sentences = [array[int(i)] for i in ids]
        tokens = pad_sequences(sentences)
        lengths = torch.tensor([len(s) for s in sentences], dtype=torch.long)
        lang = torch.full((len(ids),), lang_id, dtype=torch.long)
        return mass_batch(tokens, lengths, lang, cfg, vocab_size, generator)

    return collate


def dae_collate(array: TokenArray, lang_id: int, cfg: NoiseConfig) -> Collate:
    """Monolingual sentences -> denoising auto-encoder batches: rebuild each sentence from a noisy copy."""

    def collate(ids: np.ndarray, generator: torch.Generator) -> Batch:
        clean = [torch.from_numpy(array[int(i)]) for i in ids]
        sources = [noisy(s, cfg, generator).tolist() for s in clean]
        return seq2seq_batch(sources, [s.tolist() for s in clean], lang_id, lang_id)

    return collate


def sentence_collate(array: TokenArray) -> Callable[[np.ndarray, torch.Generator], list[list[int]]]:
    """Monolingual sentences as token lists: back-translation builds its batch with the model."""

    def collate(ids: np.ndarray, generator: torch.Generator) -> list[list[int]]:
        return [array[int(i)].tolist() for i in ids]

    return collate


def pair_collate(src: TokenArray, tgt: TokenArray, src_lang: int, tgt_lang: int) -> Collate:
    """Aligned sentence pairs -> ordinary translation batches."""

    def collate(ids: np.ndarray, generator: torch.Generator) -> Batch:
        return seq2seq_batch([src[int(i)] for i in ids], [tgt[int(i)] for i in ids], src_lang, tgt_lang)

    return collate


def pair_lengths(src: TokenArray, tgt: TokenArray) -> np.ndarray:
    """Batching length of a pair: the longer side, plus its </s> or <s>."""
    if len(src) != len(tgt):
        raise MassError(
            f"{src.prefix.name} has {len(src)} sentences and {tgt.prefix.name} {len(tgt)}: a parallel split needs "
            "line-aligned files (mass prepare --parallel checks them)",
            src.prefix.parent,
        )
    return np.maximum(src.lengths, tgt.lengths) + 1
