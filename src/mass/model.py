"""The MASS encoder-decoder Transformer, in one file.

Learned positions and language embeddings on both sides (the encoder's optional), tied input/output
embeddings, pre- or post-norm, GELU, `scaled_dot_product_attention`, and a key/value cache for incremental
decoding. The decoder takes explicit position ids because MASS feeds it a *fragment* of a sentence at the
fragment's original positions; the cross-attention takes an explicit mask because MASS hides the masked
encoder states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

# One decoder layer's share of a `DecoderCache`: "self_k"/"self_v" and "cross_k"/"cross_v".
LayerCache = dict[str, Tensor]


@dataclass
class DecoderCache:
    """Incremental decoding state: `MassModel.decode` with a cache decodes one step per call.

    A search decodes `group` consecutive rows per sentence (its beams) and between steps may reorder rows
    within their sentence or drop whole sentences (`reorder`). The first step may decode one row per sentence
    instead (a beam search's beams all start from BOS): its keys and values fill the sentence's `group` slots
    of that step, and the beams it spreads into continue from them. Keys and values are kept once per sentence:
    the encoder's ("cross_k"/"cross_v", (N, H, S, D/H)) and the decoder's own ("self_k"/"self_v", a
    (N, capacity, H, D/H) buffer whose slot t * group + b holds step t of beam b). Self-attention slots are
    never moved when beams are reordered: `visible` marks which slots make up each row's history, and the
    rows attend to their sentence's slots through that mask. Reordering beams thus selects rows of a small
    bool mask instead of copying every layer's keys and values, which was most of beam search's memory traffic.
    """

    group: int = 1
    steps: int = 0
    layers: list[LayerCache] = field(default_factory=list)
    visible: Tensor | None = None  # (rows, steps * group) bool; None for group 1, where every slot is the row's

    def begin_step(self, rows: int, sentences: int, device: torch.device) -> Tensor | None:
        """The self-attention mask (sentences, 1, rows per sentence, slots) of the step about to run; None
        for group 1."""
        if self.group == 1:
            return None
        width = rows // sentences
        if width * sentences != rows or width not in ((1, self.group) if self.steps == 0 else (self.group,)):
            raise ValueError(f"step {self.steps}: {rows} rows for {sentences} sentences in groups of {self.group}")
        # Row b of a sentence sees slot b of this step (a lone first-step row sees slot 0).
        own = torch.eye(width, self.group, dtype=torch.bool, device=device).repeat(sentences, 1)
        self.visible = own if self.visible is None else torch.cat([self.visible, own], dim=1)
        return self.visible.view(sentences, 1, width, -1)

    def reorder(self, rows: Tensor, sentences: Tensor | None) -> None:
        """Continue each new row from old row `rows[i]`.

        Args:
            rows: the old row of each new row; it must belong to the new row's sentence.
            sentences: the old sentence of each new sentence when sentences leave (or repeat); None when
                rows only move within their sentence, which leaves every key and value where it is.
        """
        if self.visible is not None:
            self.visible = self.visible.index_select(0, rows)
        if sentences is not None:
            for layer in self.layers:
                layer.update({name: t.index_select(0, sentences) for name, t in layer.items()})


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
        self, query: Tensor, keys_values: Tensor | None = None, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """Multi-head attention over whole sequences (training, encoding, decoding without a cache).

        Args:
            query: (B, T, D).
            keys_values: (B, S, D) for cross-attention; None for self-attention.
            mask: (B, 1, 1|T, S) bool, True where attention is allowed.
            causal: mask future positions.
        """
        source = query if keys_values is None else keys_values
        k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
        return self._attend(self._heads(self.q_proj(query)), k, v, mask, causal)

    def cached_self(self, query: Tensor, layer: LayerCache, slot: int, group: int, mask: Tensor | None) -> Tensor:
        """Self-attention of one decoding step (B, 1, D): store its keys/values at `slot` of the layer's
        per-sentence buffers, then attend over the sentence's slots so far, restricted by `mask`."""
        rows, _, dim = query.shape
        sentences = rows if mask is None else mask.size(0)
        shape = (sentences, rows // sentences, self.num_heads, dim // self.num_heads)
        # expand: a first step of one row per sentence fills all `group` slots (none is left uninitialised).
        k = _store(layer, "self_k", self.k_proj(query).view(shape).expand(-1, group, -1, -1), slot)
        v = _store(layer, "self_v", self.v_proj(query).view(shape).expand(-1, group, -1, -1), slot)
        return self._attend(self._heads(self.q_proj(query)), k, v, mask, False)

    def cached_cross(self, query: Tensor, memory: Tensor | None, mask: Tensor, layer: LayerCache) -> Tensor:
        """Cross-attention of one decoding step; the encoder states are projected at the first step only."""
        if "cross_k" not in layer:
            layer["cross_k"], layer["cross_v"] = self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))
        return self._attend(self._heads(self.q_proj(query)), layer["cross_k"], layer["cross_v"], mask, False)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        """Queries (B, H, T, D/H) over keys/values (B', H, S, D/H): B' = B, or B / g when consecutive groups
        of g query rows (a sentence's beams) share one row of keys/values and attend to it together."""
        rows, heads, length, head_dim = q.shape
        sentences = k.size(0)
        if sentences != rows:
            q = q.view(sentences, rows // sentences, heads, length, head_dim).transpose(1, 2)
            q = q.reshape(sentences, heads, -1, head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        if sentences != rows:
            out = out.view(sentences, heads, rows // sentences, length, head_dim).transpose(1, 2)
        return self.out_proj(out.reshape(rows, heads, length, head_dim).transpose(1, 2).reshape(rows, length, -1))


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A bool attention mask (True = attend) as 0 / -inf to add to the scores."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _store(layer: LayerCache, name: str, new: Tensor, slot: int) -> Tensor:
    """Write one step's keys or values (N, group, H, D/H) at `slot` of the layer's (N, capacity, H, D/H)
    buffer (doubling it when full: no copy per step) and return the filled slots as (N, H, slots, D/H)."""
    end = slot + new.size(1)
    buffer = layer.get(name)
    if buffer is None or buffer.size(1) < end:
        grown = new.new_empty(new.size(0), max(2 * end, 32 * new.size(1)), *new.shape[2:])
        if buffer is not None:
            grown[:, :slot] = buffer[:, :slot]
        layer[name] = buffer = grown
    buffer[:, slot:end] = new
    return buffer[:, :end].transpose(1, 2)


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

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        memory_mask: Tensor,
        cache: DecoderCache | None = None,
        index: int = 0,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        """Without a cache, whole sequences (causal); with one, the newest step of every row: layer `index`
        of the cache, `self_mask` from `DecoderCache.begin_step`."""
        if cache is None:
            x = self.self_block(x, lambda h: self.self_attn(h, causal=h.size(1) > 1))
            x = self.cross_block(x, lambda h: self.cross_attn(h, memory, mask=memory_mask))
        else:
            layer, slot = cache.layers[index], cache.steps * cache.group
            x = self.self_block(x, lambda h: self.self_attn.cached_self(h, layer, slot, cache.group, self_mask))
            x = self.cross_block(x, lambda h: self.cross_attn.cached_cross(h, memory, memory_mask, layer))
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
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Run the decoder.

        Args:
            tokens: (B, T) decoder input tokens, right-padded.
            positions: (B, T) their position ids (a MASS fragment keeps its original positions).
            lang: (B,) target language ids.
            memory: (B', S, D) encoder states; None once a cache holds their keys and values. B' = B, or with
                a cache B / g when consecutive groups of g rows (a sentence's beams) share one sentence's states.
            memory_mask: (B', S) bool, True for encoder states the decoder may attend to.
            cache: for incremental decoding (`new_cache`): then T is 1, the newest step of every row.

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
        if cache is None:
            for layer in self.decoder_layers:
                x = layer(x, memory, mask)
        else:
            if tokens.size(1) != 1:
                raise ValueError(f"a cache decodes one step per call, not {tokens.size(1)}")
            self_mask = cache.begin_step(tokens.size(0), memory_mask.size(0), tokens.device)
            # As additive masks, made once for all layers (SDPA would turn bool masks into these in each).
            mask, self_mask = (_additive(m, x.dtype) for m in (mask, self_mask))
            for i, layer in enumerate(self.decoder_layers):
                x = layer(x, memory, mask, cache, i, self_mask)
            cache.steps += 1
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

    def new_cache(self, group: int = 1) -> DecoderCache:
        """An empty cache for decoding `group` consecutive rows per sentence (the beam size; 1 for greedy)."""
        return DecoderCache(group, layers=[{} for _ in self.decoder_layers])


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
    "DecoderCache",
    "count_parameters",
    "matmul_flops_per_token",
]
