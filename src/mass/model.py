"""The MASS encoder-decoder Transformer, in one file.

Learned positions and language embeddings on both sides (the encoder's optional), tied input/output
embeddings, pre- or post-norm, GELU, `scaled_dot_product_attention`, and a key/value cache for incremental
decoding. The decoder takes explicit position ids because MASS feeds it a *fragment* of a sentence at the
fragment's original positions; the cross-attention takes an explicit mask because MASS hides the masked
encoder states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelConfig:
    """Architecture. `vocab_size` and `num_langs` of 0 mean "take them from the data"."""

    vocab_size: int = 0
    num_langs: int = 0
    embed_dim: int = 256
    num_heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    max_positions: int = 256
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pre_norm: bool = False
    pad_id: int = 0
    # False: the encoder gets no language embedding, so a sentence and its translation can only differ in
    # their words (a language-agnostic encoder for unsupervised MT); the decoder always keeps its language.
    encoder_lang_embed: bool = True

    def __post_init__(self) -> None:
        sizes = (self.embed_dim, self.num_heads, self.ffn_dim, self.encoder_layers, self.decoder_layers)
        if min(sizes) < 1 or self.embed_dim % self.num_heads or self.max_positions < 3:
            raise ValueError(
                "need num_heads, ffn_dim and layers >= 1, embed_dim a multiple of num_heads, max_positions >= 3 "
                f"(not embed_dim {self.embed_dim}, num_heads {self.num_heads}, max_positions {self.max_positions})"
            )
        if min(self.vocab_size, self.num_langs) < 0 or not (0 <= self.dropout < 1 and 0 <= self.attention_dropout < 1):
            raise ValueError("need vocab_size, num_langs >= 0 and dropout, attention_dropout in [0, 1)")


# Size presets: small functions, as in torchtune. Parameter counts are for an 8K vocabulary.
def tiny() -> ModelConfig:
    """~0.8M parameters: unit tests and smoke runs."""
    return ModelConfig(embed_dim=64, num_heads=4, ffn_dim=256, encoder_layers=2, decoder_layers=2)


def small() -> ModelConfig:
    """~9M parameters: trains on a laptop CPU in minutes (the default)."""
    return ModelConfig()


def base() -> ModelConfig:
    """~48M parameters: Transformer-base, 6+6 layers of 512."""
    return ModelConfig(embed_dim=512, num_heads=8, ffn_dim=2048, encoder_layers=6, decoder_layers=6, max_positions=512)


def paper() -> ModelConfig:
    """The paper's model: 6+6 layers, 1024 dim, 8 heads (~240M parameters with a 60K vocabulary)."""
    return ModelConfig(embed_dim=1024, num_heads=8, ffn_dim=4096, encoder_layers=6, decoder_layers=6, max_positions=512)


PRESETS = {"tiny": tiny, "small": small, "base": base, "paper": paper}

# A per-layer cache: self-attention keys/values grow by one step per call; cross-attention keys/values are
# computed once from the encoder output; "self_rows", when present, is a row selection of the self-attention
# keys/values still to be applied (by the next step, as it appends).
LayerCache = dict[str, Tensor]


class Attention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape  # (B, L, D) -> (B, H, L, D/H)
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        keys_values: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: LayerCache | None = None,
        cache_prefix: str = "",
    ) -> Tensor:
        """Multi-head attention.

        Args:
            query: (B, T, D).
            keys_values: (B', S, D) for cross-attention, where B' = B or B / g for groups of g consecutive
                query rows sharing one row (a sentence's beams); None for self-attention.
            mask: (B', 1, 1|T, S) bool, True where attention is allowed.
            causal: mask future positions (self-attention over a full sequence).
            cache: incremental decoding state; self-attention appends to it, cross-attention fills it once.
            cache_prefix: "self_" or "cross_", the cache keys of this attention.
        """
        q = self._heads(self.q_proj(query))
        key_k, key_v = cache_prefix + "k", cache_prefix + "v"
        if cache is not None and cache_prefix == "cross_" and key_k in cache:
            k, v = cache[key_k], cache[key_v]  # cross-attention: encoder keys computed at the first step
        else:
            source = query if keys_values is None else keys_values
            k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if cache is not None:
                if keys_values is None and key_k in cache:
                    rows = cache.pop("self_rows", None)
                    k, v = _append(cache[key_k], k, rows), _append(cache[key_v], v, rows)
                cache[key_k], cache[key_v] = k, v
        rows, heads, length, head_dim = q.shape
        sentences = k.size(0)
        if sentences != rows:
            # Beam search: consecutive groups of rows (a sentence's beams) share one row of encoder keys and
            # values, so the group's queries attend to it together instead of each row holding a copy.
            q = q.view(sentences, rows // sentences, heads, length, head_dim).transpose(1, 2)
            q = q.reshape(sentences, heads, -1, head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        if sentences != rows:
            out = out.view(sentences, heads, rows // sentences, length, head_dim).transpose(1, 2)
        return self.out_proj(out.reshape(rows, heads, length, head_dim).transpose(1, 2).reshape(rows, length, -1))


def _append(past: Tensor, new: Tensor, rows: Tensor | None) -> Tensor:
    """Cached keys/values (B, H, T, D/H) followed by the newest step's, after selecting `rows` of the cache.

    One copy of the cache per step: selecting the rows writes straight into the grown tensor, where
    `index_select` then `cat` would copy it twice (the larger part of beam search's cache traffic).
    """
    length = past.size(2)
    out = new.new_empty(new.size(0), new.size(1), length + new.size(2), new.size(3))
    if rows is None:
        out[:, :, :length] = past
    else:
        torch.index_select(past, 0, rows, out=out[:, :, :length])
    out[:, :, length:] = new
    return out


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class Residual(nn.Module):
    """x + dropout(f(norm(x))) for pre-norm, norm(x + dropout(f(x))) for post-norm."""

    def __init__(self, embed_dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, fn) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.embed_dim, cfg.ffn_dim, cfg.dropout)
        self.attn_block = Residual(cfg.embed_dim, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Residual(cfg.embed_dim, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.attn_block(x, lambda h: self.self_attn(h, mask=mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.attention_dropout)
        self.cross_attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg.embed_dim, cfg.ffn_dim, cfg.dropout)
        self.self_block = Residual(cfg.embed_dim, cfg.dropout, cfg.pre_norm)
        self.cross_block = Residual(cfg.embed_dim, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Residual(cfg.embed_dim, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor, cache: LayerCache | None) -> Tensor:
        # With a cache the query is the newest step only, so it may see every cached key: no causal mask.
        causal = cache is None and x.size(1) > 1
        x = self.self_block(x, lambda h: self.self_attn(h, causal=causal, cache=cache, cache_prefix="self_"))
        x = self.cross_block(
            x, lambda h: self.cross_attn(h, memory, mask=memory_mask, cache=cache, cache_prefix="cross_")
        )
        return self.ffn_block(x, self.ffn)


class Embedding(nn.Module):
    """Token + learned position + language embeddings, shared by encoder and decoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_positions, cfg.embed_dim)
        self.langs = nn.Embedding(max(cfg.num_langs, 1), cfg.embed_dim)
        self.max_positions = cfg.max_positions

    def forward(self, tokens: Tensor, positions: Tensor, lang: Tensor | None) -> Tensor:
        if positions.numel() and int(positions.max()) >= self.max_positions:
            raise ValueError(f"position {int(positions.max())} exceeds max_positions={self.max_positions}")
        x = self.tokens(tokens) + self.positions(positions)
        return x if lang is None else x + self.langs(lang)[:, None, :]


class MassModel(nn.Module):
    """Encoder-decoder Transformer with tied embeddings.

    Shapes: B batch, S source length, T target length, D embed_dim, V vocabulary.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Post-norm normalises the embeddings (as XLM/MASS do); pre-norm normalises each stack's output.
        self.encoder_norm = nn.LayerNorm(cfg.embed_dim)
        self.decoder_norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                nn.init.zeros_(module.weight[module.padding_idx])

    def _embed(self, tokens: Tensor, positions: Tensor, lang: Tensor | None, norm: nn.LayerNorm) -> Tensor:
        x = self.embed(tokens, positions, lang)
        if not self.cfg.pre_norm:
            x = norm(x)
        return self.dropout(x)

    def encode(self, tokens: Tensor, lang: Tensor) -> Tensor:
        """Encode right-padded source tokens (B, S) of languages (B,) into states (B, S, D)."""
        positions = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)
        mask = (tokens != self.cfg.pad_id)[:, None, None, :]
        x = self._embed(tokens, positions, lang if self.cfg.encoder_lang_embed else None, self.encoder_norm)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x) if self.cfg.pre_norm else x

    def decode(
        self,
        tokens: Tensor,
        positions: Tensor,
        lang: Tensor,
        memory: Tensor | None,
        memory_mask: Tensor,
        cache: list[LayerCache] | None = None,
    ) -> Tensor:
        """Run the decoder.

        Args:
            tokens: (B, T) decoder input tokens, right-padded.
            positions: (B, T) their position ids (a MASS fragment keeps its original positions).
            lang: (B,) target language ids.
            memory: (B', S, D) encoder states; None once a cache holds their keys and values. B' = B, or
                B / g when consecutive groups of g rows (a sentence's beams) share one sentence's states.
            memory_mask: (B', S) bool, True for encoder states the decoder may attend to.
            cache: one dict per layer for incremental decoding (then T is the newest step, usually 1).

        Returns:
            (B, T, D) hidden states; `logits()` turns them into vocabulary scores.
        """
        # A row whose encoder states are all hidden (k = m: MASS as a pure language model) attends to
        # nothing: let it attend everywhere, then zero its cross-attention input through the memory.
        empty = ~memory_mask.any(dim=1)
        if bool(empty.any()):
            if memory is not None:
                memory = memory.masked_fill(empty[:, None, None], 0.0)
            memory_mask = memory_mask | empty[:, None]
        mask = memory_mask[:, None, None, :]
        x = self._embed(tokens, positions, lang, self.decoder_norm)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, mask, None if cache is None else cache[i])
        return self.decoder_norm(x) if self.cfg.pre_norm else x

    def logits(self, hidden: Tensor) -> Tensor:
        """Tied output projection: (..., D) -> (..., V). Apply it only where a loss is needed."""
        return F.linear(hidden, self.embed.tokens.weight, self.output_bias)

    def forward(
        self,
        src_tokens: Tensor,
        src_lang: Tensor,
        dec_tokens: Tensor,
        dec_positions: Tensor,
        tgt_lang: Tensor,
        memory_mask: Tensor | None = None,
        output_mask: Tensor | None = None,
    ) -> Tensor:
        """Full forward pass to logits.

        Args:
            memory_mask: (B, S) bool, encoder states the decoder may see (default: not padding).
            output_mask: (B, T) bool; if given, logits are computed only there and returned as (N, V)
                for its N True positions (MASS needs them on the span only). Otherwise (B, T, V).
        """
        memory = self.encode(src_tokens, src_lang)
        if memory_mask is None:
            memory_mask = src_tokens != self.cfg.pad_id
        hidden = self.decode(dec_tokens, dec_positions, tgt_lang, memory, memory_mask)
        return self.logits(hidden if output_mask is None else hidden[output_mask])

    def new_cache(self) -> list[LayerCache]:
        return [{} for _ in self.decoder_layers]


def reorder_cache(cache: list[LayerCache], rows: Tensor, sentences: Tensor | None) -> list[LayerCache]:
    """Select rows of the cache after a search step.

    Args:
        rows: for the self-attention keys/values, one per decoder row (beams duplicated, finished dropped).
        sentences: for the cross-attention ones, one per row of encoder states; None keeps them as they are
            (beam search reorders only within a sentence, whose beams share them).
    """

    def reorder(layer: LayerCache) -> LayerCache:
        out = dict(layer)
        if sentences is not None:
            out.update({name: t.index_select(0, sentences) for name, t in layer.items() if name.startswith("cross_")})
        # The self-attention keys/values are selected when the next step appends to them (`_append`).
        if "self_k" in layer:
            pending = layer.get("self_rows")
            out["self_rows"] = rows if pending is None else pending.index_select(0, rows)
        return out

    return [reorder(layer) for layer in cache]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_flops_per_token(cfg: ModelConfig, src_len: float, tgt_len: float) -> tuple[float, float]:
    """Forward matmul FLOPs per source token and per target token (projection on target tokens only).

    Used by the benchmark to express throughput as a fraction of the machine's matmul rate; attention
    score/value products are included with the given average lengths.
    """
    d, f = cfg.embed_dim, cfg.ffn_dim
    enc = cfg.encoder_layers * (2 * 4 * d * d + 2 * 2 * d * f + 2 * 2 * src_len * d)
    enc += cfg.decoder_layers * 2 * 2 * d * d  # every decoder layer projects the encoder states to keys/values
    dec = cfg.decoder_layers * (2 * 4 * d * d + 2 * 2 * d * d + 2 * 2 * d * f + 2 * 2 * (tgt_len + src_len) * d)
    dec += 2 * d * cfg.vocab_size
    return enc, dec


__all__ = [
    "ModelConfig",
    "MassModel",
    "PRESETS",
    "tiny",
    "small",
    "base",
    "paper",
    "reorder_cache",
    "count_parameters",
    "matmul_flops_per_token",
]
