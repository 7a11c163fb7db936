"""Token-budget batching: group sentences of similar length so that padding, and so memory, stays bounded."""

from __future__ import annotations

import numpy as np


def token_budget_batches(
    lengths: np.ndarray,
    max_tokens: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    max_sentences: int | None = None,
    pad_multiple: int = 1,
) -> list[np.ndarray]:
    """Batches of sentence indices with ``len(batch) * max padded length <= max_tokens``.

    Sentences are sorted by length (ties broken at random per (seed, epoch), so batches change between
    epochs) and cut greedily into the largest batches that fit the budget; the batch order is then
    shuffled. A sentence longer than ``max_tokens`` alone makes a batch of one.

    Args:
        lengths: length in tokens of each sentence, as the model will see it (special tokens included).
        max_tokens: token budget per batch, padding included.
        seed, epoch: make the result deterministic, different from one epoch to the next.
        shuffle: False gives a fixed length-sorted order with ties in index order (for evaluation).
        max_sentences: optional cap on sentences per batch.
        pad_multiple: lengths are rounded up to this multiple when checking the budget, to match a
            collater that pads to multiples (e.g. 8 for tensor cores).

    Returns:
        Arrays of int64 indices into ``lengths``; each index appears in exactly one batch.
    """
    if max_tokens < 1 or pad_multiple < 1 or (max_sentences is not None and max_sentences < 1):
        raise ValueError("max_tokens, pad_multiple and max_sentences must be positive")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.min() < 0:
        raise ValueError("sentence lengths must not be negative")
    padded = -(-lengths // pad_multiple) * pad_multiple
    rng = np.random.default_rng([seed, epoch])
    order = _length_order(padded, rng if shuffle else None)
    bounds = _greedy_bounds(padded[order], max_tokens, max(1, max_sentences or len(padded)))
    batches = np.split(order, bounds[1:-1])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b for b in batches if len(b)]


def _length_order(lengths: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Indices by ascending length; equal lengths in random order when ``rng`` is given, else index order.

    A stable sort of a random permutation breaks ties at random; uint32 keys let numpy use radix sort.
    """
    keys = np.minimum(lengths, np.iinfo(np.uint32).max).astype(np.uint32)
    if rng is None:
        return np.argsort(keys, kind="stable")
    perm = rng.permutation(len(keys))
    return perm[np.argsort(keys[perm], kind="stable")]


def _greedy_bounds(sorted_lengths: np.ndarray, max_tokens: int, max_sentences: int) -> np.ndarray:
    """Start positions of greedy batches over ascending lengths, plus the end position.

    Because lengths ascend, a batch from ``s`` to ``e`` costs ``(e - s + 1) * len[e]``, which grows with
    ``e``, so greedy cutting is exact. Inside a run of equal lengths all batches have the same size and
    are emitted at once, so the loop runs about twice per distinct length, not once per batch.
    """
    n = len(sorted_lengths)
    parts = [np.zeros(1, dtype=np.int64)]
    start = 0
    while start < n:
        length = int(sorted_lengths[start])
        cap = min(max_sentences, max(1, max_tokens // max(length, 1)), n - start)
        run_end = int(np.searchsorted(sorted_lengths, length, side="right"))
        full = (run_end - start) // cap
        if full:
            parts.append(start + cap * np.arange(1, full + 1, dtype=np.int64))
            start += cap * full
            continue
        window = sorted_lengths[start : start + cap]
        over = np.flatnonzero(np.arange(1, cap + 1) * window > max_tokens)
        start += max(int(over[0]) if over.size else cap, 1)
        parts.append(np.array([start], dtype=np.int64))
    return np.concatenate(parts)


def filter_by_length(lengths: np.ndarray, min_len: int, max_len: int) -> np.ndarray:
    """Indices (int64) of sentences whose length is within [min_len, max_len], in order."""
    lengths = np.asarray(lengths)
    return np.flatnonzero((lengths >= min_len) & (lengths <= max_len)).astype(np.int64)


def shard(batches: list, rank: int, world_size: int) -> list:
    """This rank's share of the batches: every ``world_size``-th one, with the tail dropped so that all
    ranks take the same number of steps (an uneven count would hang collective operations)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    usable = len(batches) // world_size * world_size
    return batches[rank:usable:world_size]
