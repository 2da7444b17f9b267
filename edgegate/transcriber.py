"""The PyTorch model's public API: ``WhisperModel(...).transcribe(audio)``, faster-whisper style.

    from edgegate.transcriber import WhisperModel
    model = WhisperModel("whisper-base")
    segments, info = model.transcribe("talk.flac", word_timestamps=True, vad_filter=True)
    for s in segments:                        # lazy: each 30-s window is decoded as you iterate
        print(f"[{s.start:.2f} -> {s.end:.2f}] {s.text}")
    print(model.transcribe_text("clip.wav", language="en").text)   # the same, joined
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegate.alignment import ALIGNMENT_HEADS, alignment_heads
from edgegate.dense_check import DENSE_CHECK, DenseCheck, check_mode
from edgegate.errors import BudgetError
from edgegate.longform import (
    DEFAULT_TEMPERATURES,
    ModelPorts,
    build_options,
    plan_info,
    resolve_audio_ctx,
    transcribe_long,
)
from edgegate.models.loaders import load_whisper
from edgegate.models.registry import DEFAULT_TRANSCRIBE_MODEL, EDGE_MODELS, resolve_model, tokenizer_path
from edgegate.models.whisper import Gate, Whisper
from edgegate.pipeline import (
    MelFeatures,
    Segment,
    Transcription,
    TranscriptionInfo,
    collect,
    to_samples,
    transcribe_windows,
)
from edgegate.plan import Plan, encoder_frames
from edgegate.tokenizer import WhisperTokenizer


class TorchDecoderState:
    """Decoder KV caches for one utterance on the PyTorch model (see ``edgegate.decoding``)."""

    def __init__(self, model: Whisper, cross_kv: list, gates: list[Gate]):
        self.model = model
        self.cross_kv = cross_kv
        self.gates = gates
        self.cache: dict = {}

    def step(self, tokens: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model.decode(torch.from_numpy(tokens), self.cross_kv, self.gates, self.cache)
        return logits[:, -1].float().numpy()

    def reorder(self, index: np.ndarray) -> None:
        idx = torch.from_numpy(index)
        for key, value in self.cache.items():
            if isinstance(key, int):
                self.cache[key] = (value[0].index_select(0, idx), value[1].index_select(0, idx))
        n = len(index)
        # Every row attends to the same audio: grow the cross K/V by broadcasting, not copying.
        self.cross_kv = [None if kv is None else (kv[0][:1].expand(n, -1, -1, -1), kv[1][:1].expand(n, -1, -1, -1))
                         for kv in self.cross_kv]


def torch_aligner(model: Whisper, gates: list[Gate], heads: np.ndarray):
    """``align(cross, tokens)`` for word timestamps: teacher-forced logits and the alignment heads' scores.

    Heads whose cross-attention the plan skips are left out; if none is left, every head of the
    kept cross-attention layers in the upper half of the decoder stands in.
    """
    n_enc = model.n_encoder_gates
    kept = {int(layer) for layer in range(model.dims.n_text_layer) if gates[n_enc + 3 * layer + 1] is not False}
    pairs = [(int(layer), int(h)) for layer, h in heads.T if int(layer) in kept]
    if not pairs:
        upper = [layer for layer in sorted(kept) if layer >= model.dims.n_text_layer // 2] or sorted(kept)
        pairs = [(layer, h) for layer in upper for h in range(model.dims.n_text_head)]

    def align(cross_kv: list, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not pairs:  # no cross-attention at all: nothing ties tokens to time
            return None, None
        blocks = model.decoder.blocks
        sinks = {layer: [] for layer, _ in pairs}
        for layer, sink in sinks.items():
            blocks[layer].cross_attn.qk_sink = sink
        try:
            with torch.inference_mode():
                logits = model.decode(torch.from_numpy(tokens), cross_kv, gates)
        finally:
            for layer in sinks:
                blocks[layer].cross_attn.qk_sink = None
        qk = torch.stack([sinks[layer][0][0, h] for layer, h in pairs])
        return logits[0].float().numpy(), qk.numpy()

    return align


class _CrossKV(list):
    """A window's cross-attention K/V that keeps the encoder output, for the dense check's missing K/V."""

    def __init__(self, cross: list, xa: torch.Tensor):
        super().__init__(cross)
        self.xa = xa
        self.dense: list | None = None  # every layer's K/V, completed once per window


class MaskedModel:
    """Gate names and keep-masks for a wrapper whose ``model`` has ``gate_names`` and ``split_gates``
    (Whisper and OWSM alike)."""

    model: Any

    @property
    def gate_names(self) -> list[str]:
        return self.model.gate_names

    def mask_to_gates(self, mask: list[bool] | np.ndarray | None) -> list[Gate]:
        if mask is None:
            return self.model.split_gates(None)
        return self.model.split_gates(torch.as_tensor(np.asarray(mask, dtype=bool)))


class WhisperModel(MaskedModel):
    """A gated Whisper in PyTorch with its tokenizer."""

    def __init__(self, model: str | Path | Whisper = DEFAULT_TRANSCRIBE_MODEL,
                 tokenizer: WhisperTokenizer | None = None, threads: int | None = None,
                 alignment_heads: bytes | None = None):
        if threads:
            torch.set_num_threads(threads)
        if isinstance(model, Whisper):
            self.model = model.eval()
            self.tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
        else:
            path = resolve_model(model)
            self.model = load_whisper(path)
            self.tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(path))
            # an edge model is its base model's weights: the same cross-attention heads align words
            base = EDGE_MODELS.get(str(model), {}).get("base_model", str(model))
            alignment_heads = alignment_heads or ALIGNMENT_HEADS.get(base)
        # On the model too, so a bundle exported from this instance reads the same heads.
        alignment_heads = alignment_heads or getattr(self.model, "alignment_heads", None)
        self.model.alignment_heads = alignment_heads
        self.alignment_heads_dump = alignment_heads
        # the fixed-window path's token limit per window, as the runtime Session's max_tokens
        self.max_tokens = self.model.dims.n_text_ctx // 2

    @property
    def default_audio_ctx(self) -> int | None:
        """The encoder margin ``audio_ctx="auto"`` means: an edge-adapted model's own (None = full 30 s)."""
        return getattr(self.model, "default_audio_ctx", None)


    def ports(self, mask: list[bool] | np.ndarray | None = None, dense_check: str | bool = "off") -> ModelPorts:
        """encode / make_state / align over this model with ``mask`` (see ``edgegate.longform``);
        ``dense_check``: the plan's dense check mode (edgegate.dense_check)."""
        gates = self.mask_to_gates(mask)
        dims = self.model.dims
        mode = check_mode(dense_check)
        check = None if mode == "off" else self._dense_check(gates, mode)

        def encode(mel: np.ndarray) -> list:
            with torch.inference_mode():
                xa = self.model.embed_audio(torch.from_numpy(np.ascontiguousarray(mel)), gates)
                cross = self.model.cross_kv(xa, gates)
                return _CrossKV(cross, xa) if check is not None else cross

        heads = alignment_heads(dims.n_text_layer, dims.n_text_head, self.alignment_heads_dump)
        return ModelPorts(encode, lambda cross: TorchDecoderState(self.model, cross, gates), self.tokenizer,
                          dims.n_vocab, dims.n_text_ctx, torch_aligner(self.model, gates, heads), check,
                          context_fallback=mode != "off")

    def _dense_check(self, gates: list[Gate], mode: str) -> DenseCheck | None:
        """The dense decoder over a window encoded with ``gates``: the K/V of the cross-attentions they skip
        are projected on first use, the encoder's output is the gated one."""
        n_enc = self.model.n_encoder_gates
        if not any(g is False for g in gates[n_enc:]):
            return None
        dense = gates[:n_enc] + [None] * (len(gates) - n_enc)
        only_skipped = gates[:n_enc] + [None if g is False else False for g in gates[n_enc:]]

        def dense_state(cross: _CrossKV) -> TorchDecoderState:
            if cross.dense is None:  # once per window: an end-checked pass and the dense redo share them
                with torch.inference_mode():
                    extra = self.model.cross_kv(cross.xa, only_skipped)
                cross.dense = [a if a is not None else b for a, b in zip(cross, extra, strict=True)]
            return TorchDecoderState(self.model, cross.dense, dense)

        return DenseCheck(dense_state, self.tokenizer.eot, end=mode == "all")

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, language: str | None = None,
                   task: str = "transcribe", beam_size: int = 1, temperature: float | tuple = DEFAULT_TEMPERATURES,
                   word_timestamps: bool = False, vad_filter: bool = False, budget: float | None = None,
                   mask: list[bool] | np.ndarray | None = None, audio_ctx: int | str | None = "auto",
                   vad_options: Any = None, dense_check: str | bool = DENSE_CHECK,
                   **options: Any) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """``segments, info`` for audio of any length: timestamps, seeking, fallback, optional word times and VAD.

        ``segments`` is a lazy generator (each window is decoded when iterated); ``info`` has the
        language (detected on the first 30 s when not given), durations and the plan. Further
        keywords are :class:`edgegate.longform.LongformOptions` fields (condition_on_previous_text,
        initial_prompt, prefix, compression_ratio_threshold, log_prob_threshold, no_speech_threshold,
        best_of, ...). ``budget`` needs a gate predictor: use ``edgegate.gated.load_gated``.
        ``audio_ctx``: "auto" (the model's ``default_audio_ctx``: an edge-adapted model's margin, else
        the full 30 s), "full", or N = the real length + N encoder positions. ``dense_check``: how the dense
        decoder watches a mask that skips decoder modules ("loops", "all" or "off": edgegate.dense_check).
        """
        if budget:
            raise BudgetError(f"budget {budget:g} needs a gate predictor; load one with edgegate.gated.load_gated "
                              "or pass an explicit mask")
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        ctx = resolve_audio_ctx(audio_ctx, self.default_audio_ctx)
        opts = build_options(language, task, beam_size, temperature, word_timestamps, ctx, options)
        mask_list = None if mask is None else [bool(m) for m in mask]
        return transcribe_long(audio, self.ports(mask, dense_check), opts, self.model.dims.n_mels, sample_rate,
                               vad_filter,
                               vad_options, mask_list, plan_info(self.gate_names, mask_list, ctx))

    def transcribe_text(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, **kwargs: Any
                        ) -> Transcription:
        """``transcribe()`` run to the end: the joined text with every segment (same keywords)."""
        return collect(*self.transcribe(audio, sample_rate, **kwargs))

    def detect_language(self, audio: str | Path | np.ndarray, sample_rate: int = 16000,
                        mask: list[bool] | np.ndarray | None = None, audio_ctx: int | str | None = "auto",
                        ) -> tuple[str, float, dict[str, float]]:
        """(language, its probability, every language's probability) from the first 30 s."""
        from edgegate.longform import detect_first_window, mel_source, prepare_audio_source

        source, _, duration, _ = prepare_audio_source(audio, sample_rate, False)
        info = TranscriptionInfo("", None, duration, duration, None)
        language, probs = detect_first_window(mel_source(source, self.model.dims.n_mels), self.ports(mask),
                                              resolve_audio_ctx(audio_ctx, self.default_audio_ctx), info)
        return language, probs[language], probs

    def transcribe_windows(self, audio: str | Path | np.ndarray, sample_rate: int = 16000,
                           language: str | None = None, task: str = "transcribe", beam_size: int = 1,
                           mask: list[bool] | np.ndarray | None = None, audio_ctx: int | str | None = "auto",
                           dense_check: str | bool = DENSE_CHECK) -> Transcription:
        """Fixed 30-s windows without timestamps (one segment per window): the short-utterance path.

        What the evaluation, live partials and the runtime ``Session.transcribe_windows`` use (the same decoding, so
        their tokens can be compared); ``mask`` keeps (True) or skips (False) each module of
        ``gate_names``; ``audio_ctx`` trims the encoder context to the audio plus that many
        positions ("full"/None = Whisper's full 30 s, "auto" = the model's own margin); ``dense_check`` as in
        :meth:`transcribe`.
        """
        t0 = time.perf_counter()
        audio_ctx = resolve_audio_ctx(audio_ctx, self.default_audio_ctx)
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        samples = to_samples(audio, sample_rate)
        t_front = time.perf_counter()
        features = MelFeatures.of(samples, self.model.dims.n_mels)
        timings = {"frontend": time.perf_counter() - t_front, "encoder": 0.0, "decoder": 0.0}
        keep = np.ones(len(self.gate_names), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        plan = Plan(keep, audio_ctx, encoder_frames(features.request.frames, audio_ctx))
        return self.run_windows(features, plan, language, task, beam_size, timings, t0,
                                None if mask is None else [bool(m) for m in mask], dense_check)

    def run_windows(self, features: MelFeatures, plan: Plan, language: str | None, task: str, beam_size: int,
                    timings: dict[str, float], t0: float, mask: list[bool] | None,
                    dense_check: str | bool = DENSE_CHECK) -> Transcription:
        """The fixed-window path for a request whose log-mel and plan are computed (the gated model's)."""
        ports = self.ports(None if plan.dense else plan.mask, dense_check)
        return transcribe_windows(features, plan, ports.encode, ports.make_state, self.tokenizer,
                                  self.model.dims.n_vocab, language, task, beam_size, self.max_tokens,
                                  timings, t0, mask, ports.check, ports.context_fallback)
