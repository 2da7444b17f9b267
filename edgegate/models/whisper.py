"""Whisper encoder-decoder in PyTorch whose every residual module can be skipped by a gate.

Parameter names follow openai/whisper's ``model.py`` so that its checkpoints load as they are.
Gateable modules have stable names in execution order (see ``gate_names``, defined with the
model's dims in :mod:`edgegate.models.whisper_layout`): ``encoder.3.attn``, ``encoder.3.mlp``,
``decoder.1.self_attn``, ``decoder.1.cross_attn``, ``decoder.1.mlp``.

A gate vector holds one keep-value per gateable module:
- ``None``: dense.
- a bool tensor, or a float tensor that needs no grad outside training: a skipped module is not
  computed at all (``x = x``), and a skipped cross-attention gets no K/V projection either.
- a float tensor (B, L) that requires grad, or any float gates in training mode: the gate
  multiplies the residual branch so that gradients reach whatever produced it.
A module skipped in place may be replaced by a small skip adapter (``add_skip_adapters``) that
runs only when the module does not, so the dense path stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The shape and the module names live torch-free, where the cost table and the exporter read them too.
from edgegate.context_tail import PADDING_LOG_MEL
from edgegate.models.whisper_layout import DECODER_KINDS, ENCODER_KINDS, ModelDims, gate_names  # noqa: F401


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> Tensor:
    log_timescale_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class MultiHeadAttention(nn.Module):
    # Set to a list to have ``attend`` append its pre-softmax scores (B, H, Tq, Tk): word timestamps read
    # the alignment heads' cross-attention this way. None (the default) computes nothing extra.
    qk_sink: list | None = None

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values already split into heads: (B, H, T, Dh) each."""
        return self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        q = self.split_heads(self.query(x))
        if self.qk_sink is not None:
            self.qk_sink.append((q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        k, v = self.project_kv(x)
        return self.attend(x, k, v, mask)


class SkipAdapter(nn.Module):
    """Low-rank bypass that stands in for a skipped module; zero-initialised so it starts as identity."""

    def __init__(self, n_state: int, rank: int):
        super().__init__()
        self.ln = nn.LayerNorm(n_state)
        self.down = nn.Linear(n_state, rank)
        self.up = nn.Linear(rank, n_state)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(self.ln(x))))


def mlp(n_state: int, n_mlp: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))


# One module's gate as the blocks see it: None (run), bool (run or skip), Tensor (B,) multiplier.
Gate = bool | Tensor | None


def gated_residual(x: Tensor, gate: Gate, branch: Callable[[], Tensor],
                   adapter: SkipAdapter | None = None) -> Tensor:
    if gate is None or gate is True:
        return x + branch()
    if gate is False:
        return x + adapter(x) if adapter is not None else x
    g = gate.to(x.dtype).view(-1, 1, 1)
    out = x + g * branch()
    if adapter is not None:
        out = out + (1 - g) * adapter(x)
    return out


class EncoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = mlp(n_state, n_mlp)
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, gates: tuple[Gate, Gate], adapters: tuple = (None, None),
                padding_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``padding_kv``: this layer's keys and values of a padding-only window (1, H, n_audio_ctx, Dh); a
        trimmed window's frames then also attend to positions ``frames ..`` of it, as at full context."""
        x = gated_residual(x, gates[0], lambda: self.self_attention(x, padding_kv), adapters[0])
        x = gated_residual(x, gates[1], lambda: self.mlp(self.mlp_ln(x)), adapters[1])
        return x

    def self_attention(self, x: Tensor, padding_kv: tuple[Tensor, Tensor] | None) -> Tensor:
        h = self.attn_ln(x)
        k, v = self.attn.project_kv(h)
        if padding_kv is not None:
            k, v = with_padding(k, v, padding_kv)
        return self.attn.attend(h, k, v)


def with_padding(k: Tensor, v: Tensor, padding_kv: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Keys and values (B, H, T, Dh) followed by the padding's at positions T.. (the context tail)."""
    t = k.shape[2]
    pk, pv = (p[:, :, t:].to(k.dtype).expand(k.shape[0], -1, -1, -1) for p in padding_kv)
    return torch.cat([k, pk], dim=2), torch.cat([v, pv], dim=2)


class DecoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_mlp: int):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head)
        self.cross_attn_ln = nn.LayerNorm(n_state)
        self.mlp = mlp(n_state, n_mlp)
        self.mlp_ln = nn.LayerNorm(n_state)

    def self_attention(self, x: Tensor, mask: Tensor | None, cache: dict | None, key: int) -> Tensor:
        h = self.attn_ln(x)
        k, v = self.attn.project_kv(h)
        if cache is not None:
            if key in cache:
                k = torch.cat([cache[key][0], k], dim=2)
                v = torch.cat([cache[key][1], v], dim=2)
            cache[key] = (k, v)
        return self.attn.attend(h, k, v, mask)

    def forward(self, x: Tensor, cross_kv: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                gates: tuple[Gate, Gate, Gate], cache: dict | None, layer: int,
                adapters: tuple = (None, None, None)) -> Tensor:
        x = gated_residual(x, gates[0], lambda: self.self_attention(x, mask, cache, layer), adapters[0])
        if cross_kv is None and gates[1] is not False:
            raise ValueError(f"decoder layer {layer}: cross-attention is kept but has no K/V")
        x = gated_residual(x, gates[1], lambda: self.cross_attn.attend(self.cross_attn_ln(x), *cross_kv),
                           adapters[1])
        x = gated_residual(x, gates[2], lambda: self.mlp(self.mlp_ln(x)), adapters[2])
        return x


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(EncoderBlock(d, dims.n_audio_head, dims.n_audio_mlp)
                                    for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: Tensor, gates: list[Gate], adapters: list,
                padding_kv: list[tuple[Tensor, Tensor]] | None = None, record: list | None = None) -> Tensor:
        """mel (B, n_mels, 2*T) with T <= n_audio_ctx; fewer frames than 3000 trims the context.
        ``padding_kv``: every layer's padding keys and values (the context tail); ``record``, when given,
        receives every layer's own keys and values (how the padding's are computed)."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(f"audio has {x.shape[1]} encoder frames, more than n_audio_ctx")
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for i, block in enumerate(self.blocks):
            if record is not None:
                record.append(block.attn.project_kv(block.attn_ln(x)))
            x = block(x, (gates[2 * i], gates[2 * i + 1]), (adapters[2 * i], adapters[2 * i + 1]),
                      None if padding_kv is None else padding_kv[i])
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.empty(dims.n_text_ctx, d))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.blocks = nn.ModuleList(DecoderBlock(d, dims.n_text_head, dims.n_text_mlp)
                                    for _ in range(dims.n_text_layer))
        self.ln = nn.LayerNorm(d)

    def cross_kv(self, xa: Tensor, gates: list[Gate]) -> list[tuple[Tensor, Tensor] | None]:
        """Cross-attention K/V of every layer, computed once per utterance; None where skipped."""
        return [None if gates[3 * i + 1] is False else block.cross_attn.project_kv(xa)
                for i, block in enumerate(self.blocks)]

    def forward(self, tokens: Tensor, cross_kv: list, gates: list[Gate], adapters: list,
                cache: dict | None = None, hidden: list | None = None) -> Tensor:
        """Logits (B, t, vocab); ``hidden``, when given, receives every block's output and the final
        normalised state (the targets of knowledge-preserving adaptation)."""
        offset = cache.get("offset", 0) if cache is not None else 0
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[offset: offset + t]
        # Boolean mask (True = may attend); a single new token with a cache needs none.
        mask = None
        if t > 1:
            mask = torch.ones(t, offset + t, dtype=torch.bool, device=x.device).tril(offset)
        for i, block in enumerate(self.blocks):
            x = block(x, cross_kv[i], mask, tuple(gates[3 * i: 3 * i + 3]), cache, i,
                      tuple(adapters[3 * i: 3 * i + 3]))
            if hidden is not None:
                hidden.append(x)
        if cache is not None:
            cache["offset"] = offset + t
        x = self.ln(x)
        if hidden is not None:
            hidden.append(x)
        return x @ self.token_embedding.weight.to(x.dtype).T


class Whisper(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)
        self.gate_names = gate_names(dims)
        self.n_encoder_gates = 2 * dims.n_audio_layer
        self.skip_adapters = nn.ModuleDict()
        # Encoder-context margin the weights were adapted to (None: Whisper's full 30-s window).
        self.default_audio_ctx: int | None = None
        # Trimmed contexts get the padding's final states appended (edgegate.context_tail); off for
        # checkpoints that were adapted to run without them.
        self.context_tail = False
        self._tails: dict = {}  # padding states per encoder mask, and the padding's K/V ("kv")

    # -- gates -------------------------------------------------------------------------------
    def add_skip_adapters(self, rank: int = 32, names: list[str] | None = None) -> None:
        """Attach a zero-initialised low-rank bypass to each named module (default: all)."""
        for name in names or self.gate_names:
            d = self.dims.n_audio_state if name.startswith("encoder") else self.dims.n_text_state
            self.skip_adapters[name.replace(".", "_")] = SkipAdapter(d, rank)

    def _adapters(self) -> list[SkipAdapter | None]:
        return [self.skip_adapters[n.replace(".", "_")] if n.replace(".", "_") in self.skip_adapters else None
                for n in self.gate_names]

    def split_gates(self, gates: Tensor | None) -> list[Gate]:
        """Turn a gate vector (L,) or (B, L) into one gate per module (see the module docstring)."""
        n = len(self.gate_names)
        if gates is None:
            return [None] * n
        if gates.shape[-1] != n:
            raise ValueError(f"gate vector has {gates.shape[-1]} entries; this model has {n} gateable modules")
        multiply = gates.dtype != torch.bool and (gates.requires_grad or self.training)
        if multiply:
            g = gates if gates.dim() == 2 else gates[None]
            return [g[:, i] for i in range(n)]
        g = gates.bool() if gates.dim() == 1 else gates.bool()
        if g.dim() == 2:
            if not (g == g[:1]).all():  # rows differ: compute everything and mask per row
                return [g[:, i].float() for i in range(n)]
            g = g[0]
        return [bool(v) for v in g.tolist()]

    # -- forward -----------------------------------------------------------------------------
    def embed_audio(self, mel: Tensor, gates: Tensor | list[Gate] | None = None) -> Tensor:
        per_module = gates if isinstance(gates, list) else self.split_gates(gates)
        enc_gates, enc_adapters = per_module[: self.n_encoder_gates], self._adapters()[: self.n_encoder_gates]
        if not self.context_tail or mel.shape[-1] >= 2 * self.dims.n_audio_ctx:
            return self.encoder(mel, enc_gates, enc_adapters)
        xa = self.encoder(mel, enc_gates, enc_adapters, self.padding_kv())
        tail = self.padding_states(enc_gates, enc_adapters)[xa.shape[1]:]
        return torch.cat([xa, tail.to(xa.dtype).expand(xa.shape[0], -1, -1)], dim=1)

    def forget_padding_states(self) -> None:
        """Drop the cached padding states (after the encoder's weights change)."""
        self._tails.clear()

    def padding_kv(self) -> list[tuple[Tensor, Tensor]]:
        """Every encoder layer's keys and values (1, H, n_audio_ctx, Dh) for a padding-only window, dense,
        rounded to float16 as bundles store them (cached)."""
        if "kv" not in self._tails:
            record: list = []
            with torch.no_grad():
                self.encoder(self._padding_mel(), [None] * self.n_encoder_gates, [None] * self.n_encoder_gates,
                             record=record)
            self._tails["kv"] = [(k.half().float(), v.half().float()) for k, v in record]
        return self._tails["kv"]

    def padding_states(self, enc_gates: list[Gate], enc_adapters: list) -> Tensor:
        """The encoder's final states (n_audio_ctx, d) for a window of nothing but padding, under these
        encoder gates (cached; float gates, as in training, count as dense)."""
        key = tuple(g if isinstance(g, bool) or g is None else None for g in enc_gates)
        if key not in self._tails:
            with torch.no_grad():
                self._tails[key] = self.encoder(self._padding_mel(), list(key), enc_adapters)[0]
        return self._tails[key]

    def _padding_mel(self) -> Tensor:
        return torch.full((1, self.dims.n_mels, 2 * self.dims.n_audio_ctx), PADDING_LOG_MEL, device=self.device)

    def cross_kv(self, audio_features: Tensor, gates: Tensor | list[Gate] | None = None) -> list:
        per_module = gates if isinstance(gates, list) else self.split_gates(gates)
        return self.decoder.cross_kv(audio_features, per_module[self.n_encoder_gates:])

    def decode(self, tokens: Tensor, cross_kv: list, gates: Tensor | list[Gate] | None = None,
               cache: dict | None = None, hidden: list | None = None) -> Tensor:
        per_module = gates if isinstance(gates, list) else self.split_gates(gates)
        return self.decoder(tokens, cross_kv, per_module[self.n_encoder_gates:],
                            self._adapters()[self.n_encoder_gates:], cache, hidden)

    def forward(self, mel: Tensor, tokens: Tensor, gates: Tensor | None = None) -> Tensor:
        """Full teacher-forced logits (B, T, vocab)."""
        per_module = self.split_gates(gates)
        xa = self.embed_audio(mel, per_module)
        return self.decode(tokens, self.cross_kv(xa, per_module), per_module)

    @property
    def device(self) -> torch.device:
        return self.decoder.positional_embedding.device
