"""Evaluation metrics: sacreBLEU's BLEU and chrF, ROUGE, perplexity, cross-lingual retrieval.

BLEU and chrF are computed by sacreBLEU on *detokenized* text, so scores are comparable across papers and
the returned signature says exactly how they were computed. All functions take one reference per
hypothesis.
"""

from __future__ import annotations

import math

import torch
from sacrebleu.metrics import BLEU, CHRF

from mass.errors import MassError


def _check_pairs(hyps: list[str], refs: list[str]) -> None:
    """Raises MassError unless there is one reference per hypothesis and at least one pair."""
    if len(hyps) != len(refs):
        raise MassError(f"{len(hyps)} hypotheses but {len(refs)} references; they must pair up line by line")
    if not hyps:
        raise MassError("no sentences to score")


def bleu(hyps: list[str], refs: list[str], tokenize: str = "13a") -> dict:
    """Corpus BLEU with sacreBLEU.

    Args:
        hyps: detokenized hypotheses.
        refs: detokenized references, one per hypothesis.
        tokenize: sacreBLEU tokenizer ("13a" the WMT standard, "intl", "zh", "ja-mecab", "none", ...).

    Returns:
        {"bleu": score in [0, 100], "precisions": [p1..p4] in %, "bp": brevity penalty, "sys_len": int,
        "ref_len": int, "signature": e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"}.
    """
    _check_pairs(hyps, refs)
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(hyps, [refs])
    return {
        "bleu": result.score,
        "precisions": list(result.precisions),
        "bp": result.bp,
        "sys_len": result.sys_len,
        "ref_len": result.ref_len,
        "signature": str(metric.get_signature()),
    }


def chrf(hyps: list[str], refs: list[str]) -> dict:
    """Corpus chrF (character 6-grams, beta 2) with sacreBLEU.

    Returns:
        {"chrf": score in [0, 100], "signature": sacreBLEU's signature string}.
    """
    _check_pairs(hyps, refs)
    metric = CHRF()
    result = metric.corpus_score(hyps, [refs])
    return {"chrf": result.score, "signature": str(metric.get_signature())}


def rouge(hyps: list[str], refs: list[str]) -> dict:
    """Mean ROUGE-1/2/L F1 (x100) with Google's rouge-score and Porter stemming.

    rouge-score lowercases and keeps only ``[a-z0-9]`` runs, so it suits English: accented letters split
    words ("élève" counts as "l", "ve") and text in other scripts has no tokens at all. ROUGE-L here is
    sentence-level LCS (not the newline-split "rougeLsum").

    Returns:
        {"rouge1": float, "rouge2": float, "rougeL": float}, each the mean F1 over pairs times 100.
    """
    _check_pairs(hyps, refs)
    from rouge_score.rouge_scorer import RougeScorer  # imported lazily: it pulls in nltk

    keys = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for hyp, ref in zip(hyps, refs, strict=True):
        scores = scorer.score(target=ref, prediction=hyp)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(hyps) for key, total in totals.items()}


def perplexity(total_nll: float, num_tokens: int) -> float:
    """exp(total_nll / num_tokens), +inf instead of an overflow error.

    Args:
        total_nll: summed negative log-likelihood (natural log) over the tokens.
        num_tokens: number of tokens it was summed over, > 0.
    """
    if num_tokens <= 0:
        raise MassError(f"perplexity needs at least one token, got {num_tokens}")
    mean = total_nll / num_tokens
    try:
        return math.exp(mean)
    except OverflowError:
        return math.inf


def retrieval_accuracy(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """Fraction of queries whose nearest key (cosine) is their own translation: row i of `keys`.

    The probe of cross-lingual sentence retrieval (as XLM's and LASER's xsim): an encoder whose states
    do not bring a sentence and its translation together gives back-translation nothing to start from.
    Each side is centred on its own mean first, so a constant language offset (a language embedding)
    does not hide the alignment.

    Args:
        queries: (N, D) one vector per sentence.
        keys: (N, D) their translations' vectors, in the same order.
    """
    if queries.shape != keys.shape or queries.dim() != 2 or len(queries) == 0:
        shapes = f"{tuple(queries.shape)} and {tuple(keys.shape)}"
        raise MassError(f"retrieval needs two non-empty (N, D) tensors of one shape, got {shapes}")
    q = torch.nn.functional.normalize(queries - queries.mean(0), dim=1)
    k = torch.nn.functional.normalize(keys - keys.mean(0), dim=1)
    nearest = (q @ k.T).argmax(dim=1)
    return (nearest == torch.arange(len(q), device=q.device)).float().mean().item()
