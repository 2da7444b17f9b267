"""Runtime tokens == PyTorch gated model tokens, for the same audio and the same gate mask."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.models.registry import resolve_model, tokenizer_path  # noqa: E402
from edgegate.runtimes.backends.base import Module  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402
from edgegate.tokenizer import WhisperTokenizer  # noqa: E402
from edgegate.transcriber import WhisperModel  # noqa: E402

from tiny import noise_clip, tiny_whisper  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_whisper()
    tok = WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
    path = export_bundle(tmp_path_factory.mktemp("rt") / "tiny", "cpu", model, precision="fp32",
                         progress=False, log=lambda m: None)
    # the PyTorch reference decodes over the full vocabulary: no shard on the runtime side either
    return WhisperModel(model, tok, threads=1), Session.load(path, threads=1, full_vocab=True)


def masks(names: list[str]) -> dict[str, list[bool]]:
    skip_a = {"encoder.1.attn", "decoder.0.self_attn", "decoder.1.cross_attn", "decoder.1.mlp"}  # have adapters
    skip_b = {"encoder.0.mlp", "decoder.0.cross_attn", "decoder.1.self_attn"}  # no adapters
    return {
        "dense": [True] * len(names),
        "adapters": [n not in skip_a for n in names],
        "plain-skips": [n not in skip_b for n in names],
        "all-decoder-self-attn": [not n.endswith("self_attn") for n in names],
    }


@pytest.mark.parametrize("which", ["dense", "adapters", "plain-skips", "all-decoder-self-attn"])
def test_tiny_greedy_parity(tiny, which):
    ref, session = tiny
    mask = masks(session.gate_names)[which]
    audio = noise_clip()
    a = ref.transcribe_windows(audio, language="en", mask=mask)
    b = session.transcribe_windows(audio, language="en", mask=mask)
    assert len(a.tokens) > 0
    assert b.tokens == a.tokens and b.text == a.text
    assert b.mask == mask
    assert set(b.timings) >= {"frontend", "predictor", "encoder", "decoder", "total"}


def test_tiny_beam_trimmed_context_and_language_detection(tiny):
    ref, session = tiny
    mask = masks(session.gate_names)["adapters"]
    audio = noise_clip(1.5, seed=1)
    a = ref.transcribe_windows(audio, language="de", task="translate", mask=mask, beam_size=3, audio_ctx=16)
    b = session.transcribe_windows(audio, language="de", task="translate", mask=mask, beam_size=3, audio_ctx=16)
    assert b.tokens == a.tokens
    a = ref.transcribe_windows(audio)
    b = session.transcribe_windows(audio)
    assert (b.language, b.tokens) == (a.language, a.tokens)
    assert b.language_probability == pytest.approx(a.language_probability, abs=1e-4)


def test_tiny_long_audio_windows(tiny):
    ref, session = tiny
    audio = noise_clip(31.0, seed=2)
    a = ref.transcribe_windows(audio, language="en")
    b = session.transcribe_windows(audio, language="en")
    assert len(b.segments) == 2 and [s.tokens for s in b.segments] == [s.tokens for s in a.segments]


class Counting(Module):
    def __init__(self, inner: Module, counts: dict, key: str):
        self.inner, self.counts, self.key = inner, counts, key
        self.name, self.input_names, self.output_names = inner.name, inner.input_names, inner.output_names

    def run(self, feed):
        self.counts[self.key] = self.counts.get(self.key, 0) + 1
        return self.inner.run(feed)


def test_only_kept_modules_execute(tiny):
    _, loaded = tiny
    session = Session.load(loaded.bundle, full_vocab=True)  # a fresh session: wrap before any plan is cached
    counts: dict[str, int] = {}
    session.modules = {k: Counting(m, counts, k) for k, m in session.modules.items()}
    session.adapters = {k: Counting(m, counts, k + ".adapter") for k, m in session.adapters.items()}
    session._embed, session._logits = session.modules["decoder.embed"], session.modules["decoder.logits"]
    names = session.gate_names
    mask = masks(names)["adapters"]
    session.transcribe_windows(noise_clip(), language="en", mask=mask, dense_check="off")  # the plan alone
    for name, keep in zip(names, mask, strict=True):
        assert (counts.get(name, 0) > 0) == keep, name
        if not keep:
            assert counts.get(name + ".adapter", 0) > 0, f"{name} was skipped but its adapter did not run"
    assert counts.get("decoder.1.cross_kv", 0) == 0  # skipped cross-attention: no K/V projection
    assert counts["decoder.0.cross_kv"] == 1
    assert counts["encoder.stem"] == 1 and counts["decoder.logits"] == counts["decoder.embed"]


@pytest.mark.parametrize("mode", ["loops", "all"])
def test_the_dense_check_redoes_a_looping_window_with_the_skipped_kv_and_no_second_encoder_pass(tiny, mode):
    ref, loaded = tiny
    session = Session.load(loaded.bundle, full_vocab=True)
    counts: dict[str, int] = {}
    session.modules = {k: Counting(m, counts, k) for k, m in session.modules.items()}
    names = session.gate_names
    mask = [n not in {"decoder.0.cross_attn", "decoder.1.self_attn"} for n in names]  # decoder skips only
    audio = noise_clip()
    dense = session.transcribe_windows(audio, language="en")
    unchecked = session.transcribe_windows(audio, language="en", mask=mask, dense_check="off")
    counts.clear()
    checked = session.transcribe_windows(audio, language="en", mask=mask, dense_check=mode)
    # the random tiny decoder loops to its token limit with these skips: the window is decoded again, densely,
    # over the gated pass's encoder output and the K/V of the skipped cross-attention projected then
    assert checked.dense_check["redone"] == 1 and checked.dense_check["loops_cut"] == 1
    assert checked.tokens == dense.tokens and unchecked.tokens != dense.tokens
    assert counts["encoder.stem"] == 1 and counts["decoder.0.cross_kv"] == 1
    a = ref.transcribe_windows(audio, language="en", mask=mask, dense_check=mode)  # PyTorch checks the same way
    assert a.tokens == checked.tokens and a.dense_check == checked.dense_check


# -- the real Whisper base -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_session(base_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base-cpu"
    path = export_bundle(out, "cpu", base_model.model, tokenizer=tokenizer_path(resolve_model("whisper-base")),
                         precision="fp32", progress=False, log=lambda m: None)
    return Session.load(path, threads=2, full_vocab=True)


def base_masks(names: list[str]) -> dict[str, list[bool]]:
    light = {"decoder.1.self_attn", "decoder.3.self_attn", "decoder.4.self_attn", "decoder.3.mlp"}
    heavy = {n for n in names if n.endswith("self_attn")} | {"encoder.1.attn", "decoder.3.cross_attn",
                                                              "decoder.3.mlp", "decoder.5.mlp"}
    return {"dense": [True] * len(names), "light": [n not in light for n in names],
            "half-decoder": [n not in heavy for n in names]}


@pytest.mark.slow
def test_whisper_base_parity_on_librivox(base_model, base_session, librivox):
    mismatches = []
    all_masks = base_masks(base_session.gate_names)
    for i, (path, _) in enumerate(librivox):
        # every clip dense and with the half-decoder mask; the light mask on the first clip only (CI time)
        for which, mask in all_masks.items():
            if which == "light" and i > 0:
                continue
            a = base_model.transcribe_windows(str(path), language="en", mask=mask)
            b = base_session.transcribe_windows(str(path), language="en", mask=mask)
            if a.tokens != b.tokens:
                mismatches.append((Path(path).name, which, a.text, b.text))
            if which == "dense":
                assert len(b.tokens) > 5
    assert not mismatches


@pytest.mark.slow
def test_shipped_gate_set_parity_on_librivox(librivox, tmp_path):
    """The product path: the shipped whisper-base gate set (predictor + skip adapters + trimmed context),
    planned and run by the runtime, equals edgegate.gated.GatedWhisper in masks and tokens."""
    from edgegate.gate_set import shipped_gate_sets
    from edgegate.gated import load_gated

    if "whisper-base" not in shipped_gate_sets():
        pytest.skip("no shipped whisper-base gate set in edgegate/assets")
    path = export_bundle(tmp_path / "gated", "cpu", "whisper-base", gates="whisper-base", precision="fp32",
                         progress=False, log=lambda m: None)
    session = Session.load(path, threads=2, full_vocab=True)
    reference = load_gated("whisper-base", threads=2)
    assert session.audio_ctx == reference.audio_ctx and session.has_predictor
    for clip, _ in librivox:
        for budget in (0.0, 0.25, 0.5):
            a = reference.transcribe_windows(str(clip), language="en", budget=budget)
            b = session.transcribe_windows(str(clip), language="en", budget=budget)
            assert (b.mask, b.tokens) == (a.mask, a.tokens), (clip.name, budget)
