"""The runtime Session's long-form transcribe() against the PyTorch model's, on a tiny random Whisper:
the same segments, times and words under every kind of mask (word times from the bundle's
alignment graphs, which a plain transcription never runs), the same info, the same errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.errors import BundleError, EdgegateError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.models.registry import resolve_model, tokenizer_path  # noqa: E402
from edgegate.runtimes.bundle import Bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402
from edgegate.tokenizer import WhisperTokenizer  # noqa: E402
from edgegate.transcriber import WhisperModel  # noqa: E402

from tiny import noise_clip, tiny_whisper  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    model = tiny_whisper()
    tok = WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
    # fp32 modules and the full vocabulary: the PyTorch reference computes neither int8 nor shards
    path = export_bundle(tmp_path_factory.mktemp("lf") / "tiny", "cpu", model, precision="fp32", **QUIET)
    return WhisperModel(model, tok), Session.load(path, threads=1, full_vocab=True), path


def masks(names: list[str]) -> dict[str, list[bool]]:
    return {
        "dense": [True] * len(names),
        "adapters": [n not in {"encoder.1.attn", "decoder.0.self_attn", "decoder.1.mlp"} for n in names],
        # the layer the fallback heads live in is skipped: the lower layer stands in on both paths
        "no-upper-cross-attn": [n != "decoder.1.cross_attn" for n in names],
        "no-cross-attn": [not n.endswith("cross_attn") for n in names],
    }


def words(segments) -> list[tuple]:
    return [(w.word, w.start, w.end, round(w.probability, 3)) for s in segments for w in (s.words or [])]


@pytest.mark.parametrize("which", ["dense", "adapters", "no-upper-cross-attn", "no-cross-attn"])
def test_session_segments_and_words_match_the_pytorch_model(tiny, which):
    ref, session, _ = tiny
    mask = masks(session.gate_names)[which]
    audio = np.concatenate([noise_clip(3.0), noise_clip(2.0, seed=3)])
    for word_timestamps in (False, True):
        a, ai = ref.transcribe(audio, language="en", temperature=0.0, mask=mask, word_timestamps=word_timestamps)
        b, bi = session.transcribe(audio, language="en", temperature=0.0, mask=mask, word_timestamps=word_timestamps)
        a, b = list(a), list(b)
        assert a and [s.tokens for s in b] == [s.tokens for s in a]
        assert [(s.start, s.end, s.text) for s in b] == [(s.start, s.end, s.text) for s in a]
        assert all(s.mask == mask for s in b)
        assert (bi.windows, bi.decoder_steps) == (ai.windows, ai.decoder_steps)
        if word_timestamps:
            assert words(b) == words(a)
            assert bool(words(b)) == (which != "no-cross-attn")
        else:
            assert all(s.words is None for s in b)
    assert bi.plan["mask"] == mask
    assert bi.plan["kept"] == [n for n, m in zip(session.gate_names, mask, strict=True) if m]
    assert bi.plan["encoder_frames"] == 3000 and bi.plan["audio_ctx"] is None
    assert {"frontend", "plan", "encoder", "decoder", "total"} <= set(bi.timings)


def test_alignment_graphs_run_only_for_word_timestamps(tiny):
    _, session, path = tiny
    fresh = Session.load(path, threads=1)
    list(fresh.transcribe(noise_clip(), language="en", temperature=0.0)[0])
    assert fresh.alignment is not None and fresh.alignment._modules == {}  # never loaded, never run
    list(fresh.transcribe(noise_clip(), language="en", temperature=0.0, word_timestamps=True)[0])
    assert fresh.alignment._modules


def test_language_detection_trimmed_context_and_fixed_windows(tiny):
    ref, session, _ = tiny
    audio = noise_clip(1.5, seed=1)
    la, pa, probs_a = ref.detect_language(audio)
    lb, pb, probs_b = session.detect_language(audio)
    assert lb == la and pb == pytest.approx(pa, abs=1e-4) and len(probs_b) == len(probs_a) > 90
    a, ai = ref.transcribe(audio, temperature=0.0, audio_ctx=16)
    b, bi = session.transcribe(audio, temperature=0.0, audio_ctx=16)
    assert [s.tokens for s in b] == [s.tokens for s in a] and bi.language == ai.language
    assert bi.plan["audio_ctx"] == 16
    full = session.transcribe_text(audio, language="en", temperature=0.0, audio_ctx="full")
    assert full.text == ref.transcribe_text(audio, language="en", temperature=0.0, audio_ctx="full").text
    windows = session.transcribe_windows(audio, language="en")
    assert windows.tokens == ref.transcribe_windows(audio, language="en").tokens


def test_bad_requests_are_one_line_errors(tiny):
    _, session, path = tiny
    audio = noise_clip()
    for bad in ("half", -1, 2000, 1.5):
        with pytest.raises(EdgegateError, match="audio_ctx must be 'full', 'auto' or a margin"):
            session.transcribe(audio, audio_ctx=bad)
    with pytest.raises(EdgegateError, match="unknown transcribe option"):
        session.transcribe(audio, condition_on_text=False)
    with pytest.raises(EdgegateError, match="either mask or budget"):
        session.transcribe(audio, mask=[True] * len(session.gate_names), budget=0.0)
    bundle = Bundle.open(path)
    bundle.manifest.pop("alignment")  # a bundle exported before alignment graphs existed
    old = Session.load(bundle, threads=1)
    with pytest.raises(BundleError, match="no alignment graphs for word timestamps; re-export"):
        old.transcribe(audio, word_timestamps=True)
    assert list(old.transcribe(audio, language="en", temperature=0.0)[0]) is not None  # the rest still works


def test_a_budget_is_planned_once_from_the_first_30_s_as_the_fixed_windows_plan_it(tmp_path):
    from tiny import tiny_predictor

    model = tiny_whisper()
    path = export_bundle(tmp_path / "gated", "cpu", model, gates=tiny_predictor(len(model.gate_names), seed=3),
                         budget=0.4, **QUIET)
    session = Session.load(path, threads=1)
    audio = noise_clip(2.0, seed=5)
    for budget in (None, 0.6):  # None: the bundle's default (0.4)
        segments, info = session.transcribe(audio, language="en", temperature=0.0, budget=budget)
        segments = list(segments)
        fixed = session.transcribe_windows(audio, language="en", budget=budget)
        assert info.plan["mask"] == fixed.mask and not all(fixed.mask)
        assert info.plan["budget"] == (0.4 if budget is None else budget)
        assert all(s.mask == fixed.mask for s in segments)
    dense, info = session.transcribe(audio, language="en", temperature=0.0, budget=0.0)
    assert all(info.plan["mask"]) and list(dense) is not None
