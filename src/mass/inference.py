"""From text to text with a trained model: the model side of `mass.generate`'s `decode_step` interface."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from mass.batch import pad_sequences
from mass.checkpoint import load_weights, read_checkpoint_config, resolve_checkpoint
from mass.config import GenerationConfig, from_dict
from mass.data.tokenizer import BOS_ID, EOS_ID, NEVER_GENERATED, PAD_ID, Tokenizer
from mass.distributed import pick_device
from mass.errors import MassError
from mass.generate import DecodeStep, Hypothesis, Sampling, beam_search, greedy_search
from mass.model import MassModel, ModelConfig


def make_decode_step(
    model: MassModel,
    memory: Tensor,
    memory_mask: Tensor,
    tgt_lang: Tensor,
    group: int = 1,
    banned: Tensor | None = None,
) -> DecodeStep:
    """A `decode_step` over a KV cache: encoder output is computed once, each call decodes one position.

    Args:
        memory: (N, S, D) encoder states, one row per sentence.
        memory_mask: (N, S) bool.
        tgt_lang: (N,) target language ids, one per sentence.
        group: search rows per sentence (the beam size) after the first call, which decodes one row per
            sentence: row r decodes sentence r // group. The search may reorder rows within a sentence and
            drop whole sentences; the encoder keys/values are kept once per sentence and reordered only when
            sentences leave.
        banned: (V,) bool, tokens never to generate besides PAD/BOS/MASK (back-translation's `restrict_vocab`).
    """
    never = torch.tensor(NEVER_GENERATED, device=memory.device)
    if banned is not None:
        never = torch.cat([never, banned.to(memory.device).nonzero().flatten()])
    state = {"memory": memory, "mask": memory_mask, "lang": tgt_lang, "cache": model.new_cache(group)}

    def decode_step(tokens: Tensor, parents: Tensor | None) -> Tensor:
        # Rows kept in place (greedy, nothing finished) need no reordering of the cache.
        if parents is not None and not (len(parents) == len(state["lang"]) and bool((parents == state["rows"]).all())):
            before = len(state["mask"])  # sentences at the previous call
            width = len(state["lang"]) // before  # its rows per sentence: 1 at the first call, then group
            sentences = parents[::group] // width if group == 1 or len(parents) != group * before else None
            state["cache"].reorder(parents, sentences)
            if sentences is not None:
                state["mask"] = state["mask"].index_select(0, sentences)
            state["lang"] = state["lang"].index_select(0, parents)
        positions = torch.full_like(tokens, state["cache"].steps)[:, None]
        hidden = model.decode(tokens[:, None], positions, state["lang"], state["memory"], state["mask"], state["cache"])
        state["memory"] = None  # its keys and values are cached in every layer now
        state["rows"] = torch.arange(len(tokens), device=tokens.device)
        logp = torch.log_softmax(model.logits(hidden[:, -1]).float(), dim=-1)
        logp[:, never] = float("-inf")
        return logp

    return decode_step


@dataclass
class Generator:
    """A model, its tokenizer and its languages, ready to turn sentences into sentences."""

    model: MassModel
    tokenizer: Tokenizer
    langs: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def lang_id(self, lang: str) -> int:
        if lang not in self.langs:
            raise MassError(f"language {lang!r} is not in the model (its languages: {', '.join(self.langs)})")
        return self.langs.index(lang)

    @torch.no_grad()
    def generate(
        self, sources: list[list[int]], src_lang: str, tgt_lang: str, cfg: GenerationConfig, progress: bool = False
    ) -> list[list[Hypothesis]]:
        """Token ids in, n-best hypotheses (token ids and scores) out, in input order, exactly `cfg.nbest` per
        input (empty ones with score -inf where fewer finished); batched by similar length. With sampling, the
        n "best" are n draws, in the order drawn. `progress` shows a bar on stderr (sentences done), for long
        files on a CPU."""
        src_id, tgt_id = self.lang_id(src_lang), self.lang_id(tgt_lang)
        if not cfg.sampling and cfg.beam > self.model.cfg.vocab_size:  # more beams than tokens: memory, no gain
            raise MassError(f"beam {cfg.beam} is larger than the vocabulary ({self.model.cfg.vocab_size} tokens)")
        results: list[list[Hypothesis]] = [[] for _ in sources]
        sampling = None
        if cfg.sampling:  # a generator of its own per call: the same seed and input give the same samples
            generator = torch.Generator(self.device).manual_seed(cfg.seed)
            try:
                sampling = Sampling(cfg.sampling_topk, cfg.sampling_topp, cfg.temperature, generator)
            except ValueError as e:
                raise MassError(str(e)) from None
        bar = tqdm(total=len(sources), desc=f"{src_lang}->{tgt_lang}", unit="sent", disable=not progress)
        with _eval_mode(self.model), bar:
            for chunk, seqs in self._source_batches(sources, cfg.max_tokens):
                for i, out in zip(chunk, self._search(seqs, src_id, tgt_id, cfg, sampling), strict=True):
                    results[i] = out
                bar.update(len(chunk))
        return results

    def check_lengths(self, sources: list[list[int]], name: str) -> None:
        """A one-line error for the first source longer than the model's positions (rather than cutting it)."""
        limit = self.model.cfg.max_positions - 1
        for number, seq in enumerate(sources, start=1):
            if len(seq) > limit:
                raise MassError(f"line has {len(seq)} subwords, more than the model's {limit}", name, number)

    @torch.no_grad()
    def sentence_vectors(self, sources: list[list[int]], lang: str, max_tokens: int = 6000) -> torch.Tensor:
        """(N, D) mean of each sentence's encoder states (its EOS included, padding not), in input order."""
        lang_id = self.lang_id(lang)
        out = torch.empty(len(sources), self.model.cfg.embed_dim)
        with _eval_mode(self.model):
            for chunk, seqs in self._source_batches(sources, max_tokens):
                src, states = self._encode(seqs, lang_id)
                mask = (src != PAD_ID).unsqueeze(-1).to(states.dtype)
                out[chunk] = ((states * mask).sum(1) / mask.sum(1)).float().cpu()
        return out

    def _source_batches(self, sources: list[list[int]], max_tokens: int) -> Iterator[tuple[list[int], list[list[int]]]]:
        """Batches of similar length within `max_tokens`: their positions in `sources` and their token lists,
        cut to what the model's positions hold (one is left for `</s>`)."""
        max_src = self.model.cfg.max_positions - 1
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        for chunk in _length_batches(order, [min(len(s), max_src) + 1 for s in sources], max_tokens):
            yield chunk, [sources[i][:max_src] for i in chunk]

    def _encode(self, seqs: list[list[int]], lang_id: int) -> tuple[Tensor, Tensor]:
        """The padded encoder input `seqs </s>` (B, S) on the model's device and its states (B, S, D)."""
        src = pad_sequences([s + [EOS_ID] for s in seqs]).to(self.device)
        return src, self.model.encode(src, torch.full((src.size(0),), lang_id, dtype=torch.long, device=self.device))

    def _search(
        self, seqs: list[list[int]], src_id: int, tgt_id: int, cfg: GenerationConfig, sampling: Sampling | None
    ) -> list[list[Hypothesis]]:
        src, memory = self._encode(seqs, src_id)
        batch = src.size(0)
        mask = src != PAD_ID
        limit = self.model.cfg.max_positions - 1
        max_len = [min(int(cfg.max_len_a * len(s) + cfg.max_len_b), limit) for s in seqs]
        beam = max(cfg.beam, 1)
        if beam == 1 or sampling is not None:
            draws = max(cfg.nbest, 1) if sampling is not None else 1  # each sample is a row of its own
            if draws > 1:
                memory, mask = memory.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0)
                max_len = [n for n in max_len for _ in range(draws)]
            rows = batch * draws
            step = make_decode_step(self.model, memory, mask, torch.full((rows,), tgt_id, device=self.device))
            outs = greedy_search(
                step,
                rows,
                device=self.device,
                bos_id=BOS_ID,
                eos_id=EOS_ID,
                max_len=max_len,
                min_len=cfg.min_len,
                no_repeat_ngram=cfg.no_repeat_ngram,
                length_penalty=cfg.length_penalty,
                sampling=sampling,
            )
            return [outs[i : i + draws] for i in range(0, rows, draws)]
        step = make_decode_step(self.model, memory, mask, torch.full((batch,), tgt_id, device=self.device), group=beam)
        found = beam_search(
            step,
            batch,
            device=self.device,
            beam_size=beam,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            max_len=max_len,
            min_len=cfg.min_len,
            length_penalty=cfg.length_penalty,
            no_repeat_ngram=cfg.no_repeat_ngram,
            nbest=cfg.nbest,
        )
        # Fewer than nbest may finish (a max length of 0, every continuation banned): pad with the empty -inf
        # placeholder, so that there are always nbest outputs per input and output i * nbest is input i's.
        return [hyps + [Hypothesis.empty() for _ in range(cfg.nbest - len(hyps))] for hyps in found]

    def translate(
        self,
        sentences: list[str],
        src_lang: str,
        tgt_lang: str,
        cfg: GenerationConfig | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Detokenized best output per sentence (beam 5 unless `cfg` says otherwise)."""
        if isinstance(sentences, str):  # else each character would be translated as a sentence
            raise TypeError("translate takes a list of sentences; wrap one sentence in a list")
        ids = self.tokenizer.encode_batch(sentences)
        outs = self.generate(ids, src_lang, tgt_lang, cfg or GenerationConfig(), progress)
        return [self.tokenizer.decode(out[0].tokens) for out in outs]


@contextmanager
def _eval_mode(model: MassModel) -> Iterator[None]:
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _length_batches(order: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of the length-sorted `order` whose padded size stays within `max_tokens`."""
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """A checkpoint (or run directory) with the tokenizer saved beside it."""
    ckpt = resolve_checkpoint(path)
    saved = read_checkpoint_config(ckpt)
    model_cfg = from_dict(ModelConfig, saved["model"], "checkpoint model")
    model = MassModel(model_cfg)
    load_weights(model, ckpt)
    spm = ckpt / "spm.model"
    if not spm.is_file():
        raise MassError("checkpoint has no spm.model beside its weights", ckpt)
    device = pick_device(str(device))  # "auto": the GPU if there is one
    model.to(device).eval()
    return Generator(model, Tokenizer(spm), list(saved["data"]["langs"]), device)
