"""A tiny random Whisper (and gate predictor) for the tests: same code paths as the real
model, ~3.5 M parameters (mostly the 51865-token embedding, kept so the real tokenizer works).
"""

from __future__ import annotations

import numpy as np
import torch

from edgegate.models.whisper import ModelDims, Whisper

TINY_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2, n_vocab=51865,
                 n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2)
TINY_ADAPTERS = ("encoder.1.attn", "decoder.0.self_attn", "decoder.1.cross_attn", "decoder.1.mlp")


def tiny_whisper(seed: int = 0, adapters: tuple[str, ...] = TINY_ADAPTERS, **dims: int) -> Whisper:
    """Random tiny Whisper; ``adapters`` get skip adapters with non-zero (random) output weights.

    ``dims`` override :data:`TINY_DIMS` (e.g. a narrower model where only the files' layout matters).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Whisper(ModelDims(**{**TINY_DIMS, **dims}))
        if adapters:
            model.add_skip_adapters(rank=8, names=list(adapters))
            for a in model.skip_adapters.values():
                with torch.no_grad():
                    a.up.weight.copy_(torch.randn(a.up.weight.shape, generator=gen) * 0.1)
    return model.eval()


def tiny_predictor(n_modules: int, seed: int = 0, n_mels: int = 80):
    """Random gate predictor whose scores depend on the budget and the context."""
    from edgegate.predictor import GatePredictor, PredictorConfig

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pred = GatePredictor(PredictorConfig(n_modules=n_modules, n_mels=n_mels, hidden=32, embed=8))
        with torch.no_grad():
            pred.fc2.weight.normal_(0, 0.5)
    return pred.eval()


def noise_clip(seconds: float = 2.5, seed: int = 0) -> np.ndarray:
    """A 220-Hz tone in noise, float32 16 kHz: audio for tests where the words do not matter."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.1 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
