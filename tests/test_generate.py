"""Model-free tests of greedy and beam search with scripted decoders whose outputs are computed by hand."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest
import torch

import mass.generate
from mass.generate import Hypothesis, Sampling, _argmax, _topk, beam_search, greedy_search

INF = float("inf")
PAD, BOS, EOS, A, B, C, D = range(7)
VOCAB = 7

# A function (sentence index, generated prefix without BOS) -> (V,) log-probs of the next token.
LogProbFn = Callable[[int, tuple[int, ...]], torch.Tensor]


class ScriptedDecoder:
    """A decode_step whose log-probs depend only on each row's sentence and prefix.

    It tracks every row's (sentence, prefix) through ``parents`` exactly as a model would reorder its cache,
    so a search that passes wrong parents gets wrong log-probs and wrong results.
    """

    def __init__(self, fn: LogProbFn):
        self.fn = fn
        self.states: list[tuple[int, tuple[int, ...]]] = []
        self.rows_per_call: list[int] = []

    def __call__(self, tokens: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
        toks = tokens.tolist()
        if parents is None:
            assert all(t == BOS for t in toks)
            self.states = [(i, ()) for i in range(len(toks))]  # one row per sentence
        else:
            assert parents.shape == tokens.shape
            self.states = [
                (self.states[p][0], self.states[p][1] + (t,)) for p, t in zip(parents.tolist(), toks, strict=True)
            ]
        self.rows_per_call.append(len(toks))
        return torch.stack([self.fn(sent, prefix) for sent, prefix in self.states])


def table_fn(table: dict[tuple[int, ...], dict[int, float]]) -> LogProbFn:
    """Log-probs given by a table: listed tokens get their value, everything else -inf."""

    def fn(sent: int, prefix: tuple[int, ...]) -> torch.Tensor:
        out = torch.full((VOCAB,), -INF)
        for token, value in table.get(prefix, {}).items():
            out[token] = value
        return out

    return fn


def random_fn(vocab: int, seed: int = 0, eos_bias: float = 0.0) -> LogProbFn:
    """A random 'model': float64 log-softmax of logits seeded by (seed, sentence, full prefix)."""
    cache: dict[tuple, torch.Tensor] = {}

    def fn(sent: int, prefix: tuple[int, ...]) -> torch.Tensor:
        key = (seed, sent, prefix)
        if key not in cache:
            rng = random.Random(repr(key))
            logits = torch.tensor([rng.gauss(0.0, 2.0) for _ in range(vocab)], dtype=torch.float64)
            logits[EOS] += eos_bias
            cache[key] = torch.log_softmax(logits, dim=0)
        return cache[key]

    return fn


def run_beam(fn: LogProbFn, batch_size: int = 1, *, beam_size: int, **kwargs) -> list[list[Hypothesis]]:
    return beam_search(ScriptedDecoder(fn), batch_size, beam_size=beam_size, bos_id=BOS, eos_id=EOS, **kwargs)


def greedy_hyps(fn: LogProbFn, batch_size: int = 1, **kwargs) -> list[Hypothesis]:
    return greedy_search(ScriptedDecoder(fn), batch_size, bos_id=BOS, eos_id=EOS, **kwargs)


def run_greedy(fn: LogProbFn, batch_size: int = 1, **kwargs) -> list[list[int]]:
    return [h.tokens for h in greedy_hyps(fn, batch_size, **kwargs)]


def summary(hyps: list[Hypothesis]) -> list[tuple[list[int], float, float]]:
    return [(h.tokens, pytest.approx(h.score, abs=1e-6), pytest.approx(h.log_prob, abs=1e-6)) for h in hyps]


# Hand-traced with beam 2 (cumulative log-probs in brackets):
#   step 0: a [-0.1], b [-0.3], eos [-2.0]          -> no EOS in the top 2; live a, b
#   step 1: ac [-0.3], a+eos [-0.6], bc [-0.7], ...   -> finish [a] (-0.6); live ac, bc
#   step 2: acd [-0.5], bc+eos [-0.95], ...          -> finish [b c] (-0.95): 2 finished, sentence done
# With min_len 2 the EOS at step 1 is banned, so step 2 finishes [b c] and step 3 finishes [a c d] (-0.6).
TABLE = table_fn(
    {
        (): {A: -0.1, B: -0.3, EOS: -2.0},
        (A,): {EOS: -0.5, C: -0.2},
        (B,): {C: -0.4, EOS: -1.5},
        (A, C): {D: -0.2, EOS: -1.0},
        (B, C): {EOS: -0.25, D: -2.0},
        (A, C, D): {EOS: -0.1},
        (B, C, D): {EOS: -0.1},
    }
)


@pytest.mark.parametrize(
    ("length_penalty", "expected"),
    [
        # Raw log-prob: the short hypothesis wins.
        (0.0, [([A], -0.6, -0.6), ([B, C], -0.95, -0.95)]),
        (1.0, [([A], -0.6 / 2, -0.6), ([B, C], -0.95 / 3, -0.95)]),
        # Strong normalisation: the long one wins. (Early stopping means [a c d] is never reached.)
        (2.0, [([B, C], -0.95 / 9, -0.95), ([A], -0.6 / 4, -0.6)]),
    ],
)
def test_length_penalty_orders_finished_hypotheses(length_penalty, expected):
    [hyps] = run_beam(TABLE, beam_size=2, max_len=10, length_penalty=length_penalty, nbest=2)
    assert summary(hyps) == expected


def test_sentence_with_beam_finished_hypotheses_stops():
    # Early stopping: after step 2 the sentence has 2 finished hypotheses, so no fourth call is made even
    # though live beams remain (and [a c d] would score better with a strong length penalty).
    decoder = ScriptedDecoder(TABLE)
    beam_search(decoder, 1, beam_size=2, bos_id=BOS, eos_id=EOS, max_len=10)
    assert decoder.rows_per_call == [1, 2, 2]  # the first step once per sentence, then once per beam
    assert decoder.states == [(0, (A, C)), (0, (B, C))]  # the last call saw the live beams "a c", "b c"


def test_nbest_one_returns_the_best_only():
    [hyps] = run_beam(TABLE, beam_size=2, max_len=10, length_penalty=2.0, nbest=1)
    assert summary(hyps) == [([B, C], -0.95 / 9, -0.95)]


def test_min_len_forbids_early_eos():
    [hyps] = run_beam(TABLE, beam_size=2, max_len=10, min_len=2, nbest=2)
    assert summary(hyps) == [([A, C, D], -0.6 / 4, -0.6), ([B, C], -0.95 / 3, -0.95)]


def test_max_len_finalises_live_beams_with_eos():
    # Step 1 reaches max_len: both live beams are finished with their EOS log-prob.
    [hyps] = run_beam(TABLE, beam_size=2, max_len=1, nbest=2)
    assert summary(hyps) == [([A], -0.6 / 2, -0.6), ([B], -1.8 / 2, -1.8)]


def test_max_len_zero_gives_empty_hypothesis():
    # Only beam 0 is live at the first step, so there is a single finished hypothesis.
    [hyps] = run_beam(TABLE, beam_size=2, max_len=0, nbest=2)
    assert summary(hyps) == [([], -2.0, -2.0)]


def test_max_len_wins_over_min_len():
    assert run_beam(TABLE, beam_size=2, max_len=1, min_len=5, nbest=2) == run_beam(
        TABLE, beam_size=2, max_len=1, nbest=2
    )


def test_per_sentence_max_len():
    results = run_beam(TABLE, 3, beam_size=2, max_len=torch.tensor([10, 1, 0]), nbest=2)
    assert [summary(h) for h in results] == [
        [([A], -0.3, -0.6), ([B, C], -0.95 / 3, -0.95)],
        [([A], -0.3, -0.6), ([B], -0.9, -1.8)],
        [([], -2.0, -2.0)],
    ]


def test_greedy_on_table():
    assert run_greedy(TABLE, max_len=10) == [[A, C, D]]
    assert run_greedy(TABLE, 3, max_len=[10, 2, 0]) == [[A, C, D], [A, C], []]


# A constant decoder that always prefers a > b > c > eos: only n-gram blocking stops it repeating "a".


def constant_fn(sent: int, prefix: tuple[int, ...]) -> torch.Tensor:
    out = torch.full((VOCAB,), -INF)
    out[[A, B, C, EOS]] = torch.tensor([-0.1, -0.2, -0.3, -5.0])
    return out


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, [A, A, A, A, A, A]),
        (1, [A, B, C]),  # then only EOS is left
        (2, [A, A, B, A, C, A]),  # "a a" blocks a after a; then "a b" blocks b after a too
        (3, [A, A, A, B, A, A]),
    ],
)
def test_no_repeat_ngram(n, expected):
    assert run_greedy(constant_fn, max_len=6, no_repeat_ngram=n) == [expected]
    [[hyp]] = run_beam(constant_fn, beam_size=1, max_len=6, no_repeat_ngram=n)
    assert hyp.tokens == expected


def test_beam_size_one_equals_greedy_on_random_decoder():
    fn = random_fn(12, seed=1, eos_bias=1.0)
    max_len = [0, 1, 3, 5, 8, 12, 20]
    for min_len, ngram in [(0, 0), (2, 0), (0, 2), (3, 1)]:
        greedy = run_greedy(fn, len(max_len), max_len=max_len, min_len=min_len, no_repeat_ngram=ngram)
        beam = run_beam(fn, len(max_len), beam_size=1, max_len=max_len, min_len=min_len, no_repeat_ngram=ngram)
        assert [h[0].tokens for h in beam] == greedy
        assert any(0 < len(g) < lim for g, lim in zip(greedy, max_len, strict=True))  # some ended on EOS


@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_chunked_topk_equals_torch_topk_with_ties_and_minus_inf(chunk):
    gen = torch.Generator().manual_seed(chunk)
    for trial in range(200):
        rows, length = int(torch.randint(1, 6, (1,))), int(torch.randint(1, 3000, (1,)))
        k = int(torch.randint(1, min(length, 10) + 1, (1,)))
        x = torch.randn(rows, length, generator=gen)
        if trial % 3 == 0:
            x = (x * 2).round()  # many ties
        if trial % 4 == 0:
            x[x < 1] = -INF  # often fewer than k finite values
        values, index = _topk(x, k, chunk=chunk)
        assert torch.equal(values, x.topk(k, dim=1).values)
        assert torch.equal(x.gather(1, index), values)  # the indices point at those values
        assert all(len(set(row)) == k for row in index.tolist())  # each column taken once


@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_chunked_argmax_equals_torch_argmax_with_ties_nan_and_minus_inf(chunk):
    gen = torch.Generator().manual_seed(chunk)
    for trial in range(300):
        rows, length = int(torch.randint(1, 6, (1,))), int(torch.randint(1, 3000, (1,)))
        x = torch.randn(rows, length, generator=gen)
        if trial % 3 == 0:
            x = (x * 2).round()  # many ties, often between chunks and with the tail
        if trial % 4 == 0:
            x[x < 1] = -INF
        if trial % 5 == 0:
            x[0] = -INF  # a row with nothing allowed: index 0, as argmax
        if trial % 7 == 0:
            x[-1, int(torch.randint(0, length, (1,)))] = float("nan")  # argmax takes NaN as the maximum
        assert torch.equal(_argmax(x, chunk=chunk), x.argmax(dim=1))


def test_beam_search_over_a_large_vocabulary_equals_plain_topk(monkeypatch):
    # The scripted tests' 7-token vocabulary never reaches the chunked top-k; this one (3 x 5 x 2000) does.
    fn = random_fn(2000, seed=3, eos_bias=3.0)
    kwargs = {"beam_size": 5, "max_len": [4, 7, 9], "nbest": 5, "no_repeat_ngram": 2}
    chunked = run_beam(fn, 3, **kwargs)
    monkeypatch.setattr(mass.generate, "_topk", lambda x, k: x.topk(k, dim=1))
    assert summary_all(chunked) == summary_all(run_beam(fn, 3, **kwargs))
    assert any(len(h.tokens) < 9 for hyps in chunked for h in hyps)  # some ended on EOS


def summary_all(results: list[list[Hypothesis]]) -> list[list[tuple[list[int], float]]]:
    return [[(h.tokens, h.score) for h in hyps] for hyps in results]


def replayed_log_prob(fn: LogProbFn, sent: int, tokens: list[int], *, eos: bool) -> float:
    """The log-prob of `tokens` (and of a final EOS) read back from the scripted model itself."""
    steps = [fn(sent, tuple(tokens[:t]))[token].item() for t, token in enumerate(tokens)]
    return sum(steps) + (fn(sent, tuple(tokens))[EOS].item() if eos else 0.0)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("sampling", [False, True])
def test_greedy_and_sampled_hypotheses_carry_their_log_prob_and_score(length_penalty, sampling):
    fn = random_fn(12, seed=4, eos_bias=1.0)
    max_len = [0, 1, 3, 5, 8, 12, 20] * 3
    options = {"max_len": max_len, "min_len": 2, "no_repeat_ngram": 2, "length_penalty": length_penalty}
    draw = Sampling(temperature=1.5, generator=torch.Generator().manual_seed(0)) if sampling else None
    hyps = greedy_hyps(fn, len(max_len), sampling=draw, **options)
    beam = run_beam(fn, len(max_len), beam_size=1, **options)
    on_eos = 0
    for sent, (hyp, limit) in enumerate(zip(hyps, max_len, strict=True)):
        ended_on_eos = len(hyp.tokens) < limit or limit == 0  # max_len 0 forces EOS, as in beam search
        on_eos += ended_on_eos
        expected = replayed_log_prob(fn, sent, hyp.tokens, eos=ended_on_eos)  # the model's, not temperature's
        assert hyp.log_prob == pytest.approx(expected, abs=1e-5)
        assert hyp.score == pytest.approx(expected / (len(hyp.tokens) + 1) ** length_penalty, abs=1e-5)
        if not sampling and ended_on_eos:  # beam search scores the same output the same way
            (best,) = beam[sent]
            assert hyp.tokens == best.tokens
            assert (hyp.score, hyp.log_prob) == pytest.approx((best.score, best.log_prob), abs=1e-5)
    assert 0 < on_eos < len(max_len)


def test_batch_results_equal_single_sentence_results_and_rows_shrink():
    fn = random_fn(10, seed=2, eos_bias=1.5)
    max_len = [2, 9, 4, 15, 6]
    decoder = ScriptedDecoder(fn)
    batch = beam_search(decoder, 5, beam_size=3, bos_id=BOS, eos_id=EOS, max_len=max_len, nbest=3, no_repeat_ngram=2)
    for i, limit in enumerate(max_len):

        def alone(sent: int, prefix: tuple[int, ...], i: int = i) -> torch.Tensor:
            return fn(i, prefix)

        assert batch[i] == run_beam(alone, beam_size=3, max_len=limit, nbest=3, no_repeat_ngram=2)[0]
    # Finished sentences are compacted away: the work only shrinks, down to the longest sentence alone.
    rows = decoder.rows_per_call
    assert rows[:2] == [5, 15] and rows[-1] <= 3
    assert all(later <= earlier for earlier, later in itertools.pairwise(rows[1:]))

    greedy_decoder = ScriptedDecoder(fn)
    greedy = [h.tokens for h in greedy_search(greedy_decoder, 5, bos_id=BOS, eos_id=EOS, max_len=max_len)]
    assert greedy == [run_greedy(lambda s, p, i=i: fn(i, p), max_len=m)[0] for i, m in enumerate(max_len)]
    rows = greedy_decoder.rows_per_call
    assert rows[0] == 5 and rows[-1] < 5
    assert all(later <= earlier for earlier, later in itertools.pairwise(rows))


def has_repeated_ngram(tokens: tuple[int, ...], n: int) -> bool:
    grams = [tokens[i : i + n] for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def all_sequences(
    fn: LogProbFn, vocab: int, *, max_len: int, min_len: int, length_penalty: float, ngram: int
) -> list[tuple[list[int], float, float]]:
    """Scores every allowed sequence (tokens + EOS), best first."""
    out = []

    def walk(prefix: tuple[int, ...], log_prob: float) -> None:
        lps = fn(0, prefix).tolist()
        if len(prefix) >= min(min_len, max_len):
            total = log_prob + lps[EOS]
            out.append((list(prefix), total / (len(prefix) + 1) ** length_penalty, total))
        if len(prefix) == max_len:
            return
        for token in range(vocab):
            if token != EOS and not (ngram and has_repeated_ngram(prefix + (token,), ngram)):
                walk(prefix + (token,), log_prob + lps[token])

    walk((), 0.0)
    return sorted(out, key=lambda x: x[1], reverse=True)


@pytest.mark.parametrize(
    ("length_penalty", "min_len", "ngram"),
    [(1.0, 0, 0), (0.0, 0, 0), (2.0, 2, 0), (1.0, 0, 2), (0.5, 1, 1)],
)
def test_exhaustive_beam_finds_every_sequence_in_order(length_penalty, min_len, ngram):
    # Vocab {0, 1, 2=EOS, 3}: 3 non-EOS tokens and max_len 4 give 1 + 3 + 9 + 27 + 81 = 121 sequences. A beam
    # that wide keeps every prefix alive, so it must return all of them with their exact normalised scores.
    vocab, max_len = 4, 4
    fn = random_fn(vocab, seed=3)
    expected = all_sequences(fn, vocab, max_len=max_len, min_len=min_len, length_penalty=length_penalty, ngram=ngram)
    [hyps] = run_beam(
        fn,
        beam_size=121,
        nbest=121,
        max_len=max_len,
        min_len=min_len,
        length_penalty=length_penalty,
        no_repeat_ngram=ngram,
    )
    assert len(hyps) == len(expected)
    assert [(h.tokens, h.score, h.log_prob) for h in hyps] == [
        (tokens, pytest.approx(score, abs=1e-9), pytest.approx(lp, abs=1e-9)) for tokens, score, lp in expected
    ]
    assert math.isclose(hyps[0].score, max(s for _, s, _ in expected))


# --- Sampling -----------------------------------------------------------------------------------------------


def draw_frequencies(sampling: Sampling, probs: list[float], draws: int = 40_000) -> list[float]:
    """How often each token is drawn from one distribution (tokens after `probs` have probability 0)."""
    log_probs = torch.full((draws, VOCAB), -INF)
    log_probs[:, : len(probs)] = torch.tensor(probs).log()
    counts = torch.bincount(sampling.draw(log_probs), minlength=VOCAB)
    return (counts / draws).tolist()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, [0.5, 0.3, 0.2]),
        ({"top_k": 2}, [0.5 / 0.8, 0.3 / 0.8, 0.0]),
        ({"top_p": 0.6}, [0.5 / 0.8, 0.3 / 0.8, 0.0]),  # 0.5 < 0.6 so B is needed; after B, 0.8 suffices
        ({"top_p": 0.5}, [1.0, 0.0, 0.0]),  # A alone holds 0.5
        ({"top_k": 1}, [1.0, 0.0, 0.0]),
        ({"temperature": 0.5}, [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38]),  # p ** 2, renormalised
        ({"temperature": 1e-4}, [1.0, 0.0, 0.0]),  # the argmax
    ],
)
def test_sampling_draws_from_the_filtered_distribution(options, expected):
    generator = torch.Generator().manual_seed(0)
    frequencies = draw_frequencies(Sampling(**options, generator=generator), [0.5, 0.3, 0.2])
    assert frequencies[:3] == pytest.approx(expected, abs=0.01)  # 40K draws: standard error <= 0.0025
    assert frequencies[3:] == [0.0] * (VOCAB - 3)


def test_sampling_with_top_k_one_is_greedy_search_under_constraints():
    fn = random_fn(VOCAB, seed=3, eos_bias=-1.0)
    options = {"max_len": 12, "min_len": 3, "no_repeat_ngram": 2}
    sampled = run_greedy(fn, 20, sampling=Sampling(top_k=1, generator=torch.Generator().manual_seed(1)), **options)
    assert sampled == run_greedy(fn, 20, **options)


def test_sampling_is_seeded_and_keeps_the_constraints():
    fn = random_fn(VOCAB, seed=5, eos_bias=1.0)

    def sample(seed: int) -> list[list[int]]:
        sampling = Sampling(temperature=2.0, generator=torch.Generator().manual_seed(seed))
        return run_greedy(fn, 200, max_len=8, min_len=2, no_repeat_ngram=1, sampling=sampling)

    first, again, other = sample(0), sample(0), sample(1)
    assert first == again and first != other
    assert len({tuple(t) for t in first}) > 100  # varied, unlike greedy's one answer per sentence
    assert all(2 <= len(t) <= 8 and len(set(t)) == len(t) for t in first)  # min_len, max_len, no repeat


def test_a_sentence_whose_every_token_is_banned_ends_without_a_hypothesis():
    # Four real tokens, each usable once (no_repeat_ngram 1), EOS banned until 10: after four steps nothing
    # is allowed. Beam search ends such a sentence with the -inf placeholder; greedy search and sampling must
    # do the same, not take the argmax of all -inf (PAD) or draw from nothing.
    base = random_fn(VOCAB, seed=7)

    def fn(sent: int, prefix: tuple[int, ...]) -> torch.Tensor:
        log_probs = base(sent, prefix).clone()
        log_probs[[PAD, BOS]] = -INF  # as the model's decode step bans them
        return log_probs

    options = {"max_len": 10, "min_len": 10, "no_repeat_ngram": 1}
    placeholder = [([], -INF, -INF)] * 3
    assert [(h.tokens, h.score, h.log_prob) for [h] in run_beam(fn, 3, beam_size=1, **options)] == placeholder
    assert [(h.tokens, h.score, h.log_prob) for h in greedy_hyps(fn, 3, **options)] == placeholder
    sampling = Sampling(temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert [(h.tokens, h.score, h.log_prob) for h in greedy_hyps(fn, 3, sampling=sampling, **options)] == placeholder
    # With a reachable min_len the same search finishes normally.
    assert all(3 <= len(h.tokens) <= 4 and h.score > -INF for h in greedy_hyps(fn, 3, **{**options, "min_len": 3}))


def test_bad_arguments():
    for bad in ({"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="sampling needs"):
            Sampling(**bad)
    with pytest.raises(ValueError, match="nbest"):
        run_beam(TABLE, beam_size=2, max_len=3, nbest=3)
    with pytest.raises(ValueError, match="max_len"):
        run_greedy(TABLE, 2, max_len=[1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        greedy_search(lambda t, p: torch.zeros(t.numel() + 1, 5), 2, bos_id=BOS, eos_id=EOS, max_len=3)
