"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mass.errors import MassError
from mass.metrics import bleu, chrf, perplexity, retrieval_accuracy, rouge


def test_bleu_identical_is_100_with_signature():
    result = bleu(["The cat sat on the mat.", "Hello world!"], ["The cat sat on the mat.", "Hello world!"])
    assert result["bleu"] == pytest.approx(100.0)
    assert "nrefs:1" in result["signature"] and "tok:13a" in result["signature"]


def test_bleu_by_hand_from_precisions():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each, so BP = 1):
    # 1-grams 5/6 ("the" counts once), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3.
    result = bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)
    assert result["bleu"] == pytest.approx(expected)  # 53.73
    assert result["precisions"] == pytest.approx([100 * 5 / 6, 60.0, 50.0, 100 / 3])
    assert result["bp"] == pytest.approx(1.0)


def test_bleu_brevity_penalty_by_hand():
    # All n-gram precisions are 1; 5 hypothesis tokens against 6 reference tokens: BP = exp(1 - 6/5).
    result = bleu(["the cat sat on the"], ["the cat sat on the mat"])
    assert result["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 5))  # 81.87
    assert (result["sys_len"], result["ref_len"]) == (5, 6)


def test_bleu_tokenizer_is_recorded():
    assert "tok:intl" in bleu(["a b"], ["a b"], tokenize="intl")["signature"]


def test_chrf():
    assert chrf(["Hello world"], ["Hello world"])["chrf"] == pytest.approx(100.0)
    partial = chrf(["Hello word"], ["Hello world"])
    assert 0.0 < partial["chrf"] < 100.0
    assert "nrefs:1" in partial["signature"] and "nc:6" in partial["signature"]


def test_rouge_identical_and_disjoint():
    assert rouge(["the cat sat"], ["the cat sat"]) == pytest.approx(
        {"rouge1": 100, "rouge2": 100, "rougeL": 100}
    )
    assert rouge(["dogs bark"], ["the cat sat"]) == pytest.approx({"rouge1": 0, "rouge2": 0, "rougeL": 0})


def test_rouge_by_hand():
    # hyp "the cat sat" vs ref "the cat ran away":
    #   rouge1: 2 common unigrams, P = 2/3, R = 2/4 -> F = 4/7
    #   rouge2: 1 common bigram ("the cat"), P = 1/2, R = 1/3 -> F = 2/5
    #   rougeL: LCS "the cat" = 2 -> same as rouge1
    # Averaged with an identical pair (100 each).
    result = rouge(["the cat sat", "a b"], ["the cat ran away", "a b"])
    assert result == pytest.approx(
        {"rouge1": (400 / 7 + 100) / 2, "rouge2": (40 + 100) / 2, "rougeL": (400 / 7 + 100) / 2}
    )


def test_rouge_uses_stemming():
    assert rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(100.0)


def test_perplexity():
    assert perplexity(0.0, 10) == pytest.approx(1.0)
    assert perplexity(10 * math.log(7.0), 10) == pytest.approx(7.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(MassError):
        perplexity(1.0, 0)


@pytest.mark.parametrize("metric", [bleu, chrf, rouge])
def test_length_mismatch_and_empty_raise(metric):
    with pytest.raises(MassError, match="2 hypotheses but 1 references"):
        metric(["a", "b"], ["a"])
    with pytest.raises(MassError, match="no sentences"):
        metric([], [])


def test_retrieval_finds_each_translation_by_content():
    torch.manual_seed(0)
    queries = torch.randn(50, 16)
    translations = queries + 0.05 * torch.randn(50, 16)  # each near its own query, in the same order
    assert retrieval_accuracy(queries, translations) == 1.0
    swapped = translations[[1, 0, *range(2, 50)]]  # rows 0 and 1 exchanged: those two now miss
    assert retrieval_accuracy(queries, swapped) == pytest.approx(48 / 50)
    assert retrieval_accuracy(queries, torch.randn(50, 16)) < 0.2  # unrelated vectors: about chance (1/50)


def test_retrieval_ignores_a_language_offset():
    """A language embedding shifts every state of one side by the same vector; centring removes it (without
    it, every cosine would be dominated by the shared offset)."""
    torch.manual_seed(0)
    queries = torch.randn(40, 8)
    assert retrieval_accuracy(queries, queries + 100.0) == 1.0


def test_retrieval_needs_matching_shapes():
    with pytest.raises(MassError, match="one shape"):
        retrieval_accuracy(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(MassError, match="one shape"):
        retrieval_accuracy(torch.zeros(0, 4), torch.zeros(0, 4))
