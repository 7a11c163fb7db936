"""A joint SentencePiece subword model shared by all languages of a run.

Special ids are fixed so that model code can use them as constants without loading the tokenizer.
Languages are not tokens: the model gets them as separate embeddings.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from mass.errors import MassError

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4
NUM_SPECIAL = 5
# Never a training target, so never generated: an untrained model (back-translation from random weights)
# could otherwise emit PAD, which the encoder would then take for padding.
NEVER_GENERATED = (PAD_ID, BOS_ID, MASK_ID)

MASK_PIECE = "<mask>"
# Ids that never carry text; UNK is kept by decode so that lost characters stay visible as " ⁇ ".
_SILENT_IDS = frozenset({PAD_ID, BOS_ID, EOS_ID, MASK_ID})
# Below this vocabulary size, 256 byte pieces would crowd out real subwords.
_BYTE_FALLBACK_MIN_VOCAB = 2000


class Tokenizer:
    """Encode and decode text with a trained SentencePiece model.

    Args:
        model_path: the ``.model`` file written by :func:`train_tokenizer`.
    """

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise MassError("tokenizer model file not found", path=self.path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise MassError(f"not a valid SentencePiece model ({exc})", path=self.path) from exc
        _check_special_ids(self._sp, self.path)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    def encode(self, text: str) -> list[int]:
        """Token ids of one sentence, without BOS/EOS (the model adds those where it needs them)."""
        return self._sp.Encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of many sentences, encoded by SentencePiece's own thread pool (-1: all cores)."""
        if not texts:
            return []
        return self._sp.Encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of one sentence; PAD/BOS/EOS/MASK are skipped, so the caller must cut at EOS itself."""
        return self._sp.Decode(_keep_text_ids(ids))

    def decode_batch(self, batch: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
        """Text of many sentences, see :meth:`decode`."""
        if not batch:
            return []
        return self._sp.Decode([_keep_text_ids(ids) for ids in batch])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        return int(self._sp.PieceToId(piece))


def _keep_text_ids(ids: Sequence[int] | np.ndarray) -> list[int]:
    return [int(i) for i in ids if int(i) not in _SILENT_IDS]


def _check_special_ids(sp: spm.SentencePieceProcessor, path: Path) -> None:
    """Refuse models trained elsewhere whose special ids differ from the constants the model relies on."""
    ok = (
        sp.GetPieceSize() > NUM_SPECIAL
        and (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
        and sp.PieceToId(MASK_PIECE) == MASK_ID
    )
    if not ok:
        raise MassError(
            f"tokenizer special ids must be pad={PAD_ID} unk={UNK_ID} bos={BOS_ID} eos={EOS_ID} "
            f"{MASK_PIECE}={MASK_ID}; train it with `train_tokenizer`",
            path=path,
        )


def train_tokenizer(
    files: list[Path],
    model_prefix: Path,
    vocab_size: int,
    *,
    character_coverage: float = 0.9995,
    max_sentences: int = 2_000_000,
    seed: int = 0,
    byte_fallback: bool | None = None,
) -> Tokenizer:
    """Train one unigram model over the text of all languages, so that shared subwords share embeddings.

    Unigram (SentencePiece's default) rather than BPE: it trains faster at large vocabularies and
    keeps a probabilistic model that allows subword sampling later. When the corpus has more than
    ``max_sentences`` non-empty lines, a seeded Bernoulli sample of about that many lines is used,
    so the result depends only on (files, options, seed). The vocabulary size is a soft limit, so
    small corpora give a smaller vocabulary instead of an error; read ``Tokenizer.vocab_size``.

    Args:
        files: one-sentence-per-line UTF-8 text files (all languages of the run).
        model_prefix: writes ``<prefix>.model`` and ``<prefix>.vocab``, atomically.
        vocab_size: requested vocabulary size, special tokens included.
        character_coverage: fraction of characters covered by the vocabulary; the rest become UNK
            (or bytes, with byte fallback).
        max_sentences: cap on the number of training lines.
        seed: seed of the line sample.
        byte_fallback: spell uncovered characters as UTF-8 byte pieces instead of UNK. Default: on
            when ``vocab_size >= 2000`` (the 256 byte pieces would crowd a tiny vocabulary).
    """
    files = [Path(f) for f in files]
    if not files:
        raise MassError("no text files given to train the tokenizer on")
    for f in files:
        if not f.is_file():
            raise MassError("tokenizer training file not found", path=f)
    if vocab_size <= NUM_SPECIAL:
        raise MassError(f"vocab_size={vocab_size} must be larger than the {NUM_SPECIAL} special tokens")
    if byte_fallback is None:
        byte_fallback = vocab_size >= _BYTE_FALLBACK_MIN_VOCAB

    sentences = _sample_lines(files, max_sentences, seed)
    if not sentences:
        raise MassError("tokenizer training files contain no non-empty lines", path=files[0])

    model = _run_trainer(sentences, vocab_size, character_coverage, byte_fallback)
    model_path = Path(f"{model_prefix}.model")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(Path(f"{model_prefix}.vocab"), _vocab_text(model).encode("utf-8"))
    _write_atomic(model_path, model)  # the model last: its presence means both files are complete
    return Tokenizer(model_path)


def _run_trainer(sentences: list[str], vocab_size: int, character_coverage: float, byte_fallback: bool) -> bytes:
    """The serialized model, kept in memory so that no temporary path ends up inside it."""
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece="<pad>",
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            # A control symbol, not a user-defined one: a literal "<mask>" in the corpus must stay text.
            control_symbols=[MASK_PIECE],
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise MassError(f"SentencePiece training failed: {exc}") from exc
    return writer.getvalue()


def _vocab_text(model: bytes) -> str:
    """The human-readable ``piece<TAB>score`` listing SentencePiece writes next to its models."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    return "".join(f"{sp.IdToPiece(i)}\t{sp.GetScore(i):g}\n" for i in range(sp.GetPieceSize()))


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sample_lines(files: list[Path], max_sentences: int, seed: int, alpha: float = 0.5) -> list[str]:
    """Non-empty lines of all files, or a seeded sample of about ``max_sentences`` of them.

    A sample gives each file (in `mass prepare`, each language) a share proportional to its line count to
    the power `alpha`, as XLM samples the text of its joint BPE: a language with a tenth of the lines gets
    about a quarter of the sample, not a tenth, so its words are not cut into characters.
    """
    counts = [sum(1 for _ in _iter_lines([path])) for path in files]
    quotas = smoothed_quotas(counts, max_sentences, alpha)
    rng = np.random.default_rng(seed)
    sentences = []
    block = 65536
    for path, count, quota in zip(files, counts, quotas, strict=True):
        keep_prob = quota / max(count, 1)
        for i, line in enumerate(_iter_lines([path])):
            if i % block == 0:
                draws = rng.random(block)
            if keep_prob >= 1 or draws[i % block] < keep_prob:
                sentences.append(line)
    return sentences


def smoothed_quotas(counts: list[int], total: int, alpha: float = 0.5) -> list[float]:
    """How many of each group's `counts` items a sample of `total` takes: shares proportional to
    count**alpha, no group beyond its own count (what a full group cannot take goes to the others)."""
    quotas = [0.0] * len(counts)
    open_groups = [i for i, n in enumerate(counts) if n > 0]
    left = float(min(total, sum(counts)))
    while open_groups and left > 1e-9:
        weights = {i: counts[i] ** alpha for i in open_groups}
        norm = sum(weights.values())
        full = [i for i in open_groups if quotas[i] + left * weights[i] / norm >= counts[i]]
        if not full:
            for i in open_groups:
                quotas[i] += left * weights[i] / norm
            break
        for i in full:  # these take everything they have; share the rest again among the others
            left -= counts[i] - quotas[i]
            quotas[i] = float(counts[i])
        open_groups = [i for i in open_groups if i not in full]
    return quotas


def _iter_lines(files: list[Path]) -> Iterator[str]:
    """Non-blank lines, decoded strictly so that bad bytes are reported rather than silently learned."""
    for path in files:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
                except UnicodeDecodeError as exc:
                    raise MassError(f"invalid UTF-8 ({exc.reason} at byte {exc.start})", path, lineno) from exc
                if line.strip():
                    yield line
