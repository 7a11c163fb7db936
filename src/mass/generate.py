"""Greedy search, sampling and beam search over a ``decode_step`` callable, independent of the model.

The search never sees the model. It talks to a callable::

    decode_step(tokens, parents) -> log_probs
        tokens:    (N,) LongTensor, the token each live row appends at this step (BOS at the first step).
        parents:   (N,) LongTensor, for each row the row of the *previous* call it continues, or None at the
                   first call. The callable reorders its own state (KV cache, encoder output, source mask)
                   with ``state.index_select(0, parents)``: rows may be dropped (finished sentences are
                   compacted away) or duplicated (a beam spawning two continuations).
        log_probs: (N, V) float log-probabilities of the next token of each row. The search takes ownership
                   and modifies this tensor in place (on CPU, allocating a fresh (N, V) tensor every step
                   costs several times more than the arithmetic), so return a fresh tensor, not a cached one.

At the first call there are ``batch_size`` rows, one per sentence, and ``parents`` is None. Beam search then
spreads each sentence over ``beam_size`` rows, sentence-major (row ``b * beam_size + j`` is beam ``j`` of
sentence ``b``): its beams all start from BOS, so the first step is decoded once per sentence. Keeping the
model behind this interface keeps the search testable with scripted decoders and lets the model own its cache
layout.

Conventions shared by both searches:

* ``max_len`` (an int, or one limit per sentence) is the maximum number of generated tokens *excluding* EOS.
  Greedy search stops a sentence as soon as it has ``max_len`` tokens. Beam search, like fairseq, makes one
  more step there in which EOS is the only allowed token, so every hypothesis is scored with its EOS.
* ``min_len`` is the minimum number of tokens before EOS: EOS gets -inf while fewer have been generated
  (unless ``max_len`` is smaller, which wins).
* ``no_repeat_ngram = n > 0`` gives -inf to any token that would complete an n-gram already present in the
  row's generated tokens (BOS is not part of the history; EOS never is).
* Sentences that are finished are compacted away, so the model works on fewer rows as the batch drains.
* Both return ``Hypothesis`` objects: the tokens, their summed log-prob and the length-normalised score
  (for reranking n-best lists or filtering outputs, as fairseq's and Hugging Face's scores are used).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

DecodeStep = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
MaxLen = int | Sequence[int] | torch.Tensor

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """A finished output of either search.

    Attributes:
        tokens: generated token ids, without BOS and EOS.
        score: ``log_prob / (len(tokens) + 1) ** length_penalty`` (the length counts EOS); hypotheses are
            ranked by it.
        log_prob: sum of the log-probabilities of the tokens and of the final EOS (beam search scores a
            forced EOS at ``max_len``; greedy search stops there without one).
    """

    tokens: list[int]
    score: float
    log_prob: float

    @classmethod
    def scored(cls, tokens: list[int], log_prob: float, length_penalty: float) -> Hypothesis:
        """The hypothesis with its ``score`` computed from ``log_prob`` (the one place for the formula)."""
        return cls(tokens, log_prob / (len(tokens) + 1) ** length_penalty, log_prob)

    @classmethod
    def empty(cls) -> Hypothesis:
        """The stand-in for an output that never finished (every continuation banned): no tokens, -inf."""
        return cls([], NEG_INF, NEG_INF)


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by both searches
# ---------------------------------------------------------------------------------------------------------


def _per_sentence_limits(max_len: MaxLen, batch_size: int, device: torch.device) -> torch.Tensor:
    """Turns ``max_len`` into a (B,) LongTensor of per-sentence limits."""
    if isinstance(max_len, int):
        return torch.full((batch_size,), max_len, dtype=torch.long, device=device)
    limits = torch.as_tensor(max_len, dtype=torch.long).to(device).flatten()
    if limits.numel() != batch_size:
        raise ValueError(f"max_len has {limits.numel()} limits for a batch of {batch_size} sentences")
    return limits


def _decode(decode_step: DecodeStep, tokens: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
    """Calls the model and checks its answer.

    Half precision is upcast so that sums of many log-probs stay accurate, and the result is made contiguous
    because the search reshapes it and writes into it.

    Returns:
        (N, V) log-probabilities on the search's device, at least float32.
    """
    log_probs = decode_step(tokens, parents)
    if log_probs.dim() != 2 or log_probs.size(0) != tokens.numel():
        raise ValueError(
            f"decode_step returned shape {tuple(log_probs.shape)} for {tokens.numel()} rows; expected (N, V)"
        )
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    return log_probs.to(device=tokens.device, dtype=dtype).contiguous()


def _ban_repeated_ngrams(scores: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Sets to -inf, in place, every token that would complete an n-gram already present in its row.

    Vectorised over rows: all length-n windows of the history are compared with the row's last n-1 tokens;
    the last token of each matching window is banned.

    Args:
        scores: (R, V) next-token scores, modified in place.
        history: (R, T) tokens generated so far by each row.
        n: n-gram order, >= 1 (n = 1 bans every token already generated).
    """
    length = history.size(1)
    if length < n:
        return  # no complete n-gram yet
    windows = history.unfold(1, n, 1)  # (R, T - n + 1, n)
    context = history[:, length - n + 1 :]  # (R, n - 1), what the next token would follow
    matches = (windows[:, :, :-1] == context.unsqueeze(1)).all(dim=2)  # (R, T - n + 1)
    rows, starts = matches.nonzero(as_tuple=True)
    scores[rows, windows[rows, starts, -1]] = NEG_INF


def _constrain(
    scores: torch.Tensor,
    history: torch.Tensor,
    step: int,
    *,
    eos_id: int,
    min_len: int,
    no_repeat_ngram: int,
    force_eos: torch.Tensor | None = None,
) -> None:
    """Applies min_len, n-gram blocking and (optionally) forced EOS to next-token scores, in place.

    Args:
        scores: (R, V) next-token scores of the rows.
        history: (R, T) tokens generated so far, T == step.
        step: number of tokens generated so far.
        eos_id: end-of-sentence id.
        min_len: EOS is banned while step < min_len.
        no_repeat_ngram: n-gram order to block, 0 to disable.
        force_eos: (R,) bool, rows that have reached max_len: EOS is their only allowed token, whatever
            min_len says.
    """
    forced = force_eos is not None and bool(force_eos.any())
    if forced:
        eos_scores = scores[force_eos, eos_id]
    if no_repeat_ngram > 0:
        _ban_repeated_ngrams(scores, history, no_repeat_ngram)
    if step < min_len:
        scores[:, eos_id] = NEG_INF
    if forced:
        scores[force_eos] = NEG_INF
        scores[force_eos, eos_id] = eos_scores


@dataclass
class Sampling:
    """Draw each next token instead of taking the most probable one (fairseq's ``--sampling``, HF's
    ``do_sample``): varied outputs for dialogue, or many translations of one source.

    Attributes:
        top_k: draw among the k most probable tokens only (ties at the k-th score are kept); 0 = all.
        top_p: nucleus sampling: draw among the fewest most probable tokens holding at least this much
            probability (the most probable token always stays); 1.0 = all.
        temperature: divides the log-probabilities before the draw: < 1 sharpens, > 1 flattens.
        generator: the random source, so that a seed reproduces the draws.
    """

    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0 or not self.temperature > 0.0:
            values = f"top_k={self.top_k}, top_p={self.top_p}, temperature={self.temperature}"
            raise ValueError(f"sampling needs top_k >= 0, 0 < top_p <= 1 and temperature > 0, not {values}")

    def draw(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(R, V) log-probabilities (-inf for banned tokens) -> (R,) drawn token ids."""
        scores = log_probs / self.temperature
        if 0 < self.top_k < scores.size(1):
            kth = scores.topk(self.top_k, dim=1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, NEG_INF)
        if self.top_p < 1.0:
            ordered, index = scores.sort(dim=1, descending=True)
            probs = ordered.softmax(dim=1)
            outside = probs.cumsum(dim=1) - probs >= self.top_p  # the mass before it is already enough
            scores = scores.scatter(1, index, ordered.masked_fill(outside, NEG_INF))
        return torch.multinomial(scores.softmax(dim=1), 1, generator=self.generator).squeeze(1)


# ---------------------------------------------------------------------------------------------------------
# Greedy search (and sampling)
# ---------------------------------------------------------------------------------------------------------


def greedy_search(
    decode_step: DecodeStep,
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    max_len: MaxLen,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
    length_penalty: float = 1.0,
    device: torch.device | str = "cpu",
    sampling: Sampling | None = None,
) -> list[Hypothesis]:
    """Picks the most probable next token of every sentence (or draws it, with `sampling`) until EOS or max_len.

    Args:
        decode_step: the model, see the module docstring. First call: ``batch_size`` rows of BOS.
        batch_size: number of sentences B.
        bos_id: token fed at the first step.
        eos_id: token that ends a sentence.
        max_len: int or (B,) per-sentence maximum number of generated tokens, EOS excluded. A sentence that
            reaches it is finished without another call for it.
        min_len: EOS is forbidden until this many tokens have been generated.
        no_repeat_ngram: if n > 0, never complete an n-gram already in the sentence.
        length_penalty: exponent in the hypotheses' ``score``, as in ``beam_search``; it does not change the
            tokens chosen.
        device: where the tokens and parents given to ``decode_step`` live (the model's device).
        sampling: draw each token from the constrained distribution instead of taking its argmax. The
            scores are the model's log-probabilities of the drawn tokens (before temperature and top-k/p).

    Returns:
        B hypotheses. Without sampling, the same as ``beam_search(..., beam_size=1)`` (up to exact ties
        between log-probabilities, and but for the EOS log-prob that beam search adds at ``max_len``).
    """
    device = torch.device(device)
    results: list[Hypothesis] = [Hypothesis.empty() for _ in range(batch_size)]
    limits = _per_sentence_limits(max_len, batch_size, device)  # (R,) follows the live rows
    sent_ids = torch.arange(batch_size, device=device)  # (R,) original sentence of each live row
    history = torch.empty(batch_size, 0, dtype=torch.long, device=device)  # (R, step)
    log_prob = torch.zeros(batch_size, device=device)  # (R,) of the tokens chosen so far
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    parents: torch.Tensor | None = None
    needs_masks = min_len > 0 or no_repeat_ngram > 0

    step = 0
    while sent_ids.numel() > 0:
        log_probs = _decode(decode_step, tokens, parents)
        # Only a max_len of 0 is reached before choosing: such sentences end empty, EOS forced as in beam search.
        forced = limits == 0 if step == 0 else None
        if needs_masks or forced is not None:
            _constrain(
                log_probs,
                history,
                step,
                eos_id=eos_id,
                min_len=min_len,
                no_repeat_ngram=no_repeat_ngram,
                force_eos=forced,
            )
        # A row whose every token is banned (n-gram blocking with min_len) ends with no hypothesis, the -inf
        # placeholder, as in beam search; it must not take the argmax of -inf (PAD) or sample from nothing.
        stuck = torch.isneginf(log_probs.amax(dim=1)) if needs_masks else None
        if stuck is not None and bool(stuck.any()):
            log_probs[stuck, eos_id] = 0.0
        next_tokens = _argmax(log_probs) if sampling is None else sampling.draw(log_probs)
        ended = next_tokens == eos_id
        done = ended | (step + 1 >= limits)
        history = torch.cat([history, next_tokens.unsqueeze(1)], dim=1)
        log_prob += log_probs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)

        if bool(done.any()):
            rows = (done if stuck is None else done & ~stuck).nonzero(as_tuple=True)[0]
            for sent, row_tokens, is_eos, row_log_prob in zip(
                sent_ids[rows].tolist(),
                history[rows].tolist(),
                ended[rows].tolist(),
                log_prob[rows].tolist(),
                strict=True,
            ):
                out = row_tokens[:-1] if is_eos else row_tokens
                results[sent] = Hypothesis.scored(out, row_log_prob, length_penalty)
            parents = (~done).nonzero(as_tuple=True)[0]
            sent_ids, limits, log_prob = sent_ids[parents], limits[parents], log_prob[parents]
            history = history[parents]
        else:
            parents = torch.arange(sent_ids.numel(), device=device)
        tokens = history[:, -1]
        step += 1
    return results


# ---------------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Candidates:
    """The 2 * beam best extensions of each live sentence at one step, best first.

    Attributes:
        scores: (S, C) cumulative log-probs.
        rows: (S, C) row (in this step's numbering) that each candidate extends.
        tokens: (S, C) token that each candidate appends.
    """

    scores: torch.Tensor
    rows: torch.Tensor
    tokens: torch.Tensor

    def take(self, positions: torch.Tensor) -> _Candidates:
        """Selects, per sentence, the candidates at ``positions`` (S, K)."""
        return _Candidates(
            self.scores.gather(1, positions), self.rows.gather(1, positions), self.tokens.gather(1, positions)
        )


def _top_candidates(scores: torch.Tensor, num_sentences: int, beam_size: int) -> _Candidates:
    """Ranks all (row, token) extensions of each sentence jointly and keeps the best 2 * beam.

    Twice the beam guarantees ``beam`` non-EOS continuations even if every beam's best extension is EOS (each
    beam contributes at most one EOS candidate). A sentence with fewer extensions than that (the first step
    of a tiny vocabulary) is padded with -inf candidates of its first row.

    Args:
        scores: (S * width, V) cumulative scores of every extension, sentence-major rows: width is 1 at the
            first step, then beam.
    """
    vocab = scores.size(1)
    width = scores.size(0) // num_sentences
    flat = scores.view(num_sentences, width * vocab)
    if flat.size(1) < 2 * beam_size:
        flat = torch.nn.functional.pad(flat, (0, 2 * beam_size - flat.size(1)), value=NEG_INF)
    top_scores, top_index = _topk(flat, 2 * beam_size)  # sorted, best first
    first_row = torch.arange(num_sentences, device=scores.device).unsqueeze(1) * width
    rows = first_row + (top_index // vocab).clamp_(max=width - 1)
    return _Candidates(top_scores, rows, top_index % vocab)


def _topk(x: torch.Tensor, k: int, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=1)`` for an (R, L) tensor with k much smaller than L, about 4x faster on CPU.

    torch's CPU top-k copies the whole row into (value, index) pairs and partially sorts them: 8% of a beam
    search's time, the largest cost after the matmuls (on a GPU its radix select is fast and used as is).
    Here one max pass finds the k chunks of ``chunk`` columns with the largest maxima; every element of the
    row's top k lies in one of them (a chunk holding one has a maximum at least as large, and at most k
    chunks can rank before it), so only those chunks, plus the row's tail that fills no chunk, are ranked
    exactly. The values equal ``topk``'s; among tied values the indices may differ.
    """
    x = x.contiguous()  # the chunks are read with as_strided
    rows, length = x.shape
    num_chunks = length // chunk
    if num_chunks <= 4 * k or x.device.type != "cpu":
        return x.topk(k, dim=1)
    maxima = _chunk_maxima(x, chunk)
    starts = maxima.topk(k, dim=1).indices * chunk  # (R, k) first column of each chunk kept
    columns = (starts.unsqueeze(2) + torch.arange(chunk, device=x.device)).flatten(1)
    tail = torch.arange(num_chunks * chunk, length, device=x.device).expand(rows, -1)
    columns = torch.cat([columns, tail], dim=1)
    values, picked = x.gather(1, columns).topk(k, dim=1)
    return values, columns.gather(1, picked)


def _chunk_maxima(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(R, C) maximum of each whole chunk of ``chunk`` columns of a contiguous (R, L) tensor; the tail of
    ``L % chunk`` columns is left out."""
    rows, length = x.shape
    return x.as_strided((rows, length // chunk, chunk), (length, chunk, 1)).amax(dim=2)


def _argmax(x: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """``x.argmax(dim=1)`` for an (R, L) tensor, the same indices (ties go to the first), faster on CPU.

    torch's CPU argmax is about 15x slower than ``amax`` over the same row (1 ms for 64 x 8000, 5% of a greedy
    search). The first chunk of ``chunk`` columns whose maximum is the row's holds the first occurrence of
    it, so one ``amax`` pass and an argmax within that chunk find it; the tail that fills no chunk wins only
    with a strictly larger value, as it comes last.
    """
    rows, length = x.shape
    num_chunks = length // chunk
    if num_chunks < 2 or x.device.type != "cpu":
        return x.argmax(dim=1)
    x = x.contiguous()
    maxima = _chunk_maxima(x, chunk)
    best = maxima.argmax(dim=1)  # (R,) first chunk holding the largest maximum
    columns = best.unsqueeze(1) * chunk + torch.arange(chunk, device=x.device)
    index = columns.gather(1, x.gather(1, columns).argmax(dim=1, keepdim=True)).squeeze(1)
    end = num_chunks * chunk
    if end < length:
        tail_max, tail_index = x[:, end:].max(dim=1)
        best_max = maxima.gather(1, best.unsqueeze(1)).squeeze(1)
        wins = (tail_max > best_max) | (tail_max.isnan() & ~best_max.isnan())  # NaN counts as the largest
        index = torch.where(wins, end + tail_index, index)
    return index


def _finalise(
    finished: list[list[Hypothesis]],
    sentences: list[int],
    cands: _Candidates,
    history: torch.Tensor,
    *,
    step: int,
    eos_id: int,
    beam_size: int,
    length_penalty: float,
) -> None:
    """Records as finished hypotheses the finite EOS candidates among the best ``beam`` of each sentence.

    Only the top ``beam`` candidates may finish (as in fairseq): an EOS ranked below ``beam`` live
    continuations is not good enough to take a slot. A sentence keeps at most ``beam`` hypotheses; candidates
    arrive best first, so the best ones are kept.

    Args:
        finished: per original sentence, its finished hypotheses (appended to).
        sentences: original index of each live sentence.
        cands: this step's candidates.
        history: (rows, step) tokens generated by each row before this step.
    """
    top = cands.tokens[:, :beam_size] == eos_id
    top &= torch.isfinite(cands.scores[:, :beam_size])
    sent_pos, cand_pos = top.nonzero(as_tuple=True)
    if sent_pos.numel() == 0:
        return
    log_probs = cands.scores[sent_pos, cand_pos].tolist()
    token_lists = history[cands.rows[sent_pos, cand_pos]].tolist()
    for s, log_prob, tokens in zip(sent_pos.tolist(), log_probs, token_lists, strict=True):
        hyps = finished[sentences[s]]
        if len(hyps) < beam_size:
            hyps.append(Hypothesis.scored(tokens, log_prob, length_penalty))  # len(tokens) == step


def _non_eos_first(is_eos: torch.Tensor, beam_size: int) -> torch.Tensor:
    """Positions (S, beam) of the first ``beam`` non-EOS candidates of each row of ``is_eos`` (S, C).

    EOS candidates are pushed behind all others while keeping score order within each group, so this is a
    stable partition followed by a cut.
    """
    num_cands = is_eos.size(1)
    rank = is_eos.long() * num_cands + torch.arange(num_cands, device=is_eos.device)
    return rank.topk(beam_size, dim=1, largest=False).indices


def _best(hyps: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    """The ``nbest`` highest-scoring hypotheses (stable for ties), or the -inf placeholder if none."""
    if not hyps:
        return [Hypothesis.empty()]
    return sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest]


def beam_search(
    decode_step: DecodeStep,
    batch_size: int,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_len: MaxLen,
    min_len: int = 0,
    length_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
    nbest: int = 1,
    device: torch.device | str = "cpu",
) -> list[list[Hypothesis]]:
    """Beam search with fairseq's semantics, compacting finished sentences away.

    Each step ranks the ``beam * V`` extensions of a sentence by cumulative log-prob and keeps the best
    ``2 * beam``. EOS candidates among the best ``beam`` become finished hypotheses; the best ``beam``
    non-EOS candidates continue. A sentence is done when it has ``beam`` finished hypotheses (fairseq's
    default early stopping: later, possibly better-normalised hypotheses are not waited for), when it reaches
    ``max_len`` (its live beams are finished with EOS, scored), or when no live candidate has a finite score.

    Args:
        decode_step: the model, see the module docstring. First call: ``batch_size`` rows of BOS, one per
            sentence (its beams start identical); then ``beam_size`` rows per live sentence.
        batch_size: number of sentences B.
        beam_size: beams per sentence.
        bos_id: token fed at the first step.
        eos_id: token that ends a hypothesis.
        max_len: int or (B,) per-sentence maximum number of generated tokens, EOS excluded.
        min_len: EOS is forbidden until this many tokens have been generated.
        length_penalty: exponent alpha in ``score = log_prob / (len + 1) ** alpha``, where ``len + 1`` counts
            the EOS (as fairseq). 0 ranks by raw log-prob (favours short outputs); larger favours longer ones.
            It only ranks finished hypotheses; live beams are ranked by raw log-prob.
        no_repeat_ngram: if n > 0, never complete an n-gram already in the hypothesis.
        nbest: number of hypotheses returned per sentence, 1 <= nbest <= beam_size.
        device: where the tokens and parents given to ``decode_step`` live (the model's device).

    Returns:
        For each sentence, up to ``nbest`` hypotheses, best score first. A sentence whose every continuation
        was banned (so that it never finished) gets one empty hypothesis with score -inf.
    """
    if beam_size < 1 or not 1 <= nbest <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= nbest <= beam_size, got {beam_size=} {nbest=}")
    device = torch.device(device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    limits = _per_sentence_limits(max_len, batch_size, device)  # (S,) follows the live sentences
    sent_ids = torch.arange(batch_size, device=device)  # (S,) original index of each live sentence
    # Per row: cumulative log-prob, tokens so far, the token to feed. One row per sentence at the first step
    # (its beams would all be the same), then beam rows per live sentence.
    scores = torch.zeros(batch_size, device=device)
    history = torch.empty(batch_size, 0, dtype=torch.long, device=device)
    tokens = torch.full((batch_size,), bos_id, dtype=torch.long, device=device)
    parents: torch.Tensor | None = None

    step = 0
    while sent_ids.numel() > 0:
        num_sents = sent_ids.numel()
        log_probs = _decode(decode_step, tokens, parents)
        ext_scores = log_probs.add_(scores.unsqueeze(1))  # (S * beam, V) cumulative, in place
        at_limit = step >= limits  # (S,)
        _constrain(
            ext_scores,
            history,
            step,
            eos_id=eos_id,
            min_len=min_len,
            no_repeat_ngram=no_repeat_ngram,
            force_eos=at_limit.repeat_interleave(len(tokens) // num_sents),
        )
        cands = _top_candidates(ext_scores, num_sents, beam_size)
        sentences = sent_ids.tolist()
        _finalise(
            finished,
            sentences,
            cands,
            history,
            step=step,
            eos_id=eos_id,
            beam_size=beam_size,
            length_penalty=length_penalty,
        )
        # The best non-EOS candidates continue. Some may score -inf when a sentence has fewer valid
        # extensions than beams (first steps of a tiny vocabulary, n-gram bans): they stay harmless padding.
        live = cands.take(_non_eos_first(cands.tokens == eos_id, beam_size))  # (S, beam)

        full = torch.tensor([len(finished[s]) >= beam_size for s in sentences], device=device)
        done = full | at_limit | torch.isneginf(live.scores[:, 0])
        keep = (~done).nonzero(as_tuple=True)[0]
        parents = live.rows[keep].flatten()
        tokens = live.tokens[keep].flatten()
        scores = live.scores[keep].flatten()
        history = torch.cat([history[parents], tokens.unsqueeze(1)], dim=1)
        sent_ids, limits = sent_ids[keep], limits[keep]
        step += 1

    return [_best(hyps, nbest) for hyps in finished]
