"""`mass export`: one translation direction of a checkpoint as a Hugging Face BART model and tokenizer.

BART is our architecture (post-norm, GELU, learned positions, tied embeddings without scaling, a layer norm
on the embeddings) except for the language embeddings. Those are constant over a sentence, so the source
language's is folded into the encoder's position table and the target language's into the decoder's: the
exported model computes exactly our function for that direction, and `transformers` users get
`generate()` and their own training loops on it. Pre-norm models have no BART equivalent (BART
normalises the embeddings, our pre-norm does not) and are refused.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mass.checkpoint import atomic_dir
from mass.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, NEVER_GENERATED, PAD_ID, UNK_ID
from mass.errors import MassError
from mass.model import MassModel, ModelConfig, count_parameters


def _transformers():
    try:
        import transformers
    except ImportError:
        raise MassError('exporting needs the transformers package: pip install -e ".[hf]"') from None
    return transformers


def quiet_transformers() -> None:
    """No progress bars or notices from transformers on the command line (this process only)."""
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def bart_config(cfg: ModelConfig):
    """A `transformers.BartConfig` of our architecture and size, with our special token ids."""
    return _transformers().BartConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.embed_dim,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_positions,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.dropout,  # ours drops out after the feed-forward GELU too
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )


@torch.no_grad()
def to_bart(model: MassModel, src_lang: int, tgt_lang: int):
    """A `BartForConditionalGeneration` that computes what `model` computes from `src_lang` to `tgt_lang`."""
    if model.cfg.pre_norm:
        raise MassError("a pre-norm model has no BART equivalent (BART normalises its embeddings): not exported")
    bart = _transformers().BartForConditionalGeneration(bart_config(model.cfg)).eval()
    langs = model.embed.langs.weight
    src_embed = langs[src_lang] if model.cfg.encoder_lang_embed else torch.zeros_like(langs[0])
    bart.model.shared.weight.copy_(model.embed.tokens.weight)
    bart.final_logits_bias.copy_(model.output_bias[None])
    for side, norm, layers, lang in (
        (bart.model.encoder, model.encoder_norm, model.encoder_layers, src_embed),
        (bart.model.decoder, model.decoder_norm, model.decoder_layers, langs[tgt_lang]),
    ):
        offset = side.embed_positions.offset  # BART's learned positions start at row 2
        side.embed_positions.weight.zero_()
        side.embed_positions.weight[offset:].copy_(model.embed.positions.weight + lang)
        side.layernorm_embedding.load_state_dict(norm.state_dict())
        for mine, theirs in zip(layers, side.layers, strict=True):
            theirs.self_attn.load_state_dict(mine.self_attn.state_dict())
            self_block = mine.self_block if hasattr(mine, "self_block") else mine.attn_block  # decoder / encoder
            theirs.self_attn_layer_norm.load_state_dict(self_block.norm.state_dict())
            if hasattr(mine, "cross_attn"):
                theirs.encoder_attn.load_state_dict(mine.cross_attn.state_dict())
                theirs.encoder_attn_layer_norm.load_state_dict(mine.cross_block.norm.state_dict())
            theirs.fc1.load_state_dict(mine.ffn.fc1.state_dict())
            theirs.fc2.load_state_dict(mine.ffn.fc2.state_dict())
            theirs.final_layer_norm.load_state_dict(mine.ffn_block.norm.state_dict())
    assert bart.lm_head.weight.data_ptr() == bart.model.shared.weight.data_ptr(), "BART's output is not tied"
    return bart


def hf_tokenizer(spm_path: Path, max_length: int | None = None):
    """Our SentencePiece model as a `transformers` fast tokenizer: the same ids, `</s>` appended (what our
    encoder reads), special pieces dropped by `decode(..., skip_special_tokens=True)`.

    Two differences, both `transformers` conventions: a literal "<mask>", "</s>"... in the text is read as
    that special piece, and without byte fallback (vocabularies under 2,000) an unknown piece decodes to
    nothing where SentencePiece writes " ⁇ "."""
    try:
        from sentencepiece import sentencepiece_model_pb2  # reading the model's normaliser needs protobuf
    except ImportError:
        raise MassError('exporting the tokenizer needs protobuf: pip install -e ".[hf]"') from None
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_path).read_bytes())
    byte_fallback = proto.trainer_spec.byte_fallback
    tokenizer = Tokenizer(Unigram([(p.piece, p.score) for p in proto.pieces], UNK_ID, byte_fallback))
    # SentencePiece's normalisation: its compiled NFKC rules, no leading/trailing spaces, runs of spaces as one.
    charsmap = proto.normalizer_spec.precompiled_charsmap
    steps = [normalizers.Precompiled(charsmap)] if charsmap else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    ids = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "mask": MASK_ID}
    specials = {name: proto.pieces[i].piece for name, i in ids.items()}  # the model's own names for them
    tokenizer.add_special_tokens([AddedToken(piece, special=True) for piece in specials.values()])
    eos = specials["eos"]
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, EOS_ID)])
    # model_max_length: the encoder's positions, `</s>` included, so that `truncation=True` cuts a long source
    # to what the model reads (as ours cuts it) instead of an index error inside BART.
    limit = {"model_max_length": max_length} if max_length else {}
    return _transformers().PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, **{f"{name}_token": piece for name, piece in specials.items()}, **limit
    )


def export_hf(checkpoint: str | Path, out: Path, src: str, tgt: str, task: str = "mt") -> Path:
    """Write `out/` (config, safetensors weights, generation defaults, tokenizer, a model card) for `src` ->
    `tgt`; it loads with `from_pretrained(out)` offline. `out` is replaced in one rename, and only if it is an
    earlier export. The config records where it came from (`mass_checkpoint`, `mass_src`, `mass_tgt`); the
    generation defaults are `task`'s (beam size, length penalty, no-repeat n-gram size)."""
    from mass.checkpoint import resolve_checkpoint
    from mass.inference import load_generator
    from mass.tasks import get_task

    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "config.json").is_file())):
        raise MassError("exists and is not an earlier export; give a new or empty directory", out)
    checkpoint = resolve_checkpoint(checkpoint)
    generator = load_generator(checkpoint)
    bart = to_bart(generator.model, generator.lang_id(src), generator.lang_id(tgt))
    bart.config.update({"mass_checkpoint": str(checkpoint), "mass_src": src, "mass_tgt": tgt})
    gen = get_task(task).generate
    # max_length counts the start token, so the decoder may fill every position. A length that grows with
    # the source (max_len_a > 0, translation) has no transformers equivalent; a fixed one (a summary's) has:
    # max_new_tokens counts the EOS that ours does not. At the limit, EOS is forced, as ours does.
    fixed = {"max_new_tokens": gen.max_len_b + 1} if gen.max_len_a == 0 else {}
    bart.generation_config.update(
        num_beams=gen.beam,
        length_penalty=gen.length_penalty,
        no_repeat_ngram_size=gen.no_repeat_ngram,
        early_stopping=True,
        max_length=generator.model.cfg.max_positions,
        suppress_tokens=list(NEVER_GENERATED),  # as ours
        forced_eos_token_id=EOS_ID,
        **fixed,
    )
    tokenizer = hf_tokenizer(generator.tokenizer.path, generator.model.cfg.max_positions)
    card = _model_card(checkpoint, src, tgt, generator.model, task, gen.beam)
    with atomic_dir(out) as tmp:
        bart.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return out


def _model_card(checkpoint: Path, src: str, tgt: str, model: MassModel, task: str, beam: int) -> str:
    cfg = model.cfg
    size = f"{count_parameters(model) / 1e6:.1f}M parameters"
    layers = f"{cfg.encoder_layers}+{cfg.decoder_layers} layers of {cfg.embed_dim}"
    return f"""---
language: [{src}, {tgt}]
library_name: transformers
pipeline_tag: text2text-generation
tags: [mass, {"translation" if task == "mt" else task}, bart]
---

# {src} -> {tgt} ({Path(checkpoint).name})

A MASS encoder-decoder ({size}, {layers}) exported by `mass export` from `{checkpoint}` for one direction,
{src} -> {tgt}: its language embeddings are folded into BART's position tables, so this BART computes the
MASS model's function for that direction. The tokenizer is its SentencePiece model (`</s>` appended).

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(PATH), AutoTokenizer.from_pretrained(PATH)
batch = tokenizer(["..."], return_tensors="pt", padding=True)
print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))  # beam {beam}
```
"""
