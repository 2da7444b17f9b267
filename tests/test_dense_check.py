"""The dense check of a gated decoder (edgegate.dense_check): scripted decoders, then the runtime on a tiny bundle."""

from __future__ import annotations

import numpy as np
import pytest

from edgegate.decoding import DecodeOptions, decode_window
from edgegate.dense_check import MAX_OVERRULES, CheckCounts, CheckedState, DenseCheck, check_mode
from edgegate.errors import EdgegateError
from edgegate.longform import LongformOptions, ModelPorts, decode_with_fallback
from edgegate.pipeline import TranscriptionInfo
from edgegate.repetition import ends_in_loop

V, EOT = 16, 10
N_VOCAB = 51865  # Whisper multilingual


class Scripted:
    """A DecoderState whose next token is ``script(tokens seen so far)``; it records every token it is fed."""

    def __init__(self, script):
        self.script, self.seen, self.calls = script, [], 0

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.seen.extend(int(t) for t in tokens[0])
        logits = np.zeros((tokens.shape[0], V), np.float32)
        logits[:, self.script(self.seen)] = 5.0
        return logits

    def reorder(self, index: np.ndarray) -> None:
        pass


def run_greedy(state, prompt=(7,), max_steps=30) -> list[int]:
    """Greedy decoding straight over a state: the prompt, then argmax until the end of text."""
    out: list[int] = []
    logits = state.step(np.array([list(prompt)]))
    for _ in range(max_steps):
        t = int(np.argmax(logits[0]))
        if t == EOT:
            break
        out.append(t)
        logits = state.step(np.array([[t]]))
    return out


def test_the_dense_decoder_overrules_an_early_end_and_sees_every_token():
    gated = Scripted(lambda seen: EOT if len(seen) >= 3 else 1)  # stops after two tokens
    dense = Scripted(lambda seen: EOT if len(seen) >= 5 else 2)  # would say four
    counts = CheckCounts()
    state = CheckedState(gated, lambda: dense, EOT, counts, chunk=2)
    out = run_greedy(state)
    # the gated decoder continues from each token the dense one chose, and proposes the end again
    assert out == [1, 1, 2, 2]
    assert counts.end_checks == 3 and counts.overruled == 2
    assert dense.seen == gated.seen  # the replays fed the dense state every token, in order
    assert dense.calls == 4  # prompt + two tokens in chunks of two at the first check, then one token per check


def test_an_agreed_end_stands_and_costs_one_replay():
    gated = Scripted(lambda seen: EOT if len(seen) >= 4 else 3)
    dense = Scripted(lambda seen: EOT if len(seen) >= 4 else 4)
    counts = CheckCounts()
    out = run_greedy(CheckedState(gated, lambda: dense, EOT, counts))
    assert out == [3, 3, 3]
    assert counts == CheckCounts(end_checks=1, overruled=0)
    assert dense.calls == 1 and dense.seen == gated.seen


def test_a_gated_decoder_that_keeps_wanting_to_stop_gets_at_most_a_few_overrules():
    gated = Scripted(lambda seen: EOT)
    dense = Scripted(lambda seen: 5 if len(seen) < 20 else EOT)
    counts = CheckCounts()
    out = run_greedy(CheckedState(gated, lambda: dense, EOT, counts))
    assert out == [5] * MAX_OVERRULES
    assert counts.overruled == MAX_OVERRULES


def test_a_loop_is_cut_as_soon_as_it_repeats():
    gated = Scripted(lambda seen: [1, 2][len(seen) % 2])  # 2 1 2 1 ... forever
    made = []
    counts = CheckCounts()
    out = run_greedy(CheckedState(gated, lambda: made.append(1) or Scripted(lambda s: EOT), EOT, counts))
    assert out == [2, 1] * 4  # "2 1" four times in a row, then the forced end
    assert counts.loops_cut == 1 and counts.end_checks == 0 and not made  # no dense state was needed


def test_mode_loops_leaves_the_end_of_text_alone_but_still_cuts_loops():
    early = Scripted(lambda seen: EOT if len(seen) >= 3 else 1)
    never = lambda: pytest.fail("mode loops builds no dense state while decoding")  # noqa: E731
    assert run_greedy(CheckedState(early, never, EOT, end=False)) == [1, 1]
    counts = CheckCounts()
    assert run_greedy(CheckedState(Scripted(lambda seen: 4), never, EOT, counts, end=False)) == [4] * 4
    assert counts.loops_cut == 1 and counts.end_checks == 0


def test_check_modes():
    assert [check_mode(m) for m in ("off", "loops", "all", True, False)] == ["off", "loops", "all", "all", "off"]
    with pytest.raises(EdgegateError, match="unknown dense check 'sometimes'; use one of: off, loops, all"):
        check_mode("sometimes")


def test_beams_run_unchecked():
    gated = Scripted(lambda seen: EOT)
    state = CheckedState(gated, lambda: pytest.fail("no dense state for a batch of beams"), EOT)
    logits = state.step(np.array([[7], [7]]))
    assert int(np.argmax(logits[0])) == EOT and state.checking is False


def test_ends_in_loop():
    assert ends_in_loop([9, 1, 2, 1, 2, 1, 2, 1, 2], EOT)
    assert not ends_in_loop([1, 2, 1, 2, 1, 2], EOT)
    assert ends_in_loop([5, 11, 5, 12, 5, 13, 5], EOT)  # timestamps between the repeats do not hide a loop
    assert not ends_in_loop([], EOT)


def test_a_window_the_gated_decoder_loops_on_is_decoded_again_by_the_dense_decoder(tokenizer):
    eot, prompt = tokenizer.eot, len(tokenizer.sot_sequence("en", "transcribe", timestamps=False))
    word, other = tokenizer.encode(" yes")[0], tokenizer.encode(" no")[0]
    gated = Logits(lambda seen: word, N_VOCAB)  # " yes yes yes ...": a loop
    dense = Logits(lambda seen: eot if len(seen) >= prompt + 3 else other, N_VOCAB)
    check = DenseCheck(lambda cross: dense.fresh(), eot)  # mode loops
    ports = ModelPorts(lambda mel: None, lambda cross: gated.fresh(), tokenizer, N_VOCAB, 448, None, check)
    opts = LongformOptions(language="en", without_timestamps=True, temperature=(0.0, 0.5))
    info = TranscriptionInfo("en", None, 1.0, 1.0, None)
    result, loop, _ = decode_with_fallback(None, ports, opts, "en", [], [], info)
    assert loop is None and result.temperature == 0.0
    assert result.tokens == [other] * 3
    assert check.counts.loops_cut == 1 and check.counts.redone == 1


def _context_ports(tokenizer, check=None):
    """Ports whose decoder loops over a trimmed window ("trim") and says " no no no" over the full one ("full")."""
    eot, prompt = tokenizer.eot, len(tokenizer.sot_sequence("en", "transcribe", timestamps=False))
    word, other = tokenizer.encode(" yes")[0], tokenizer.encode(" no")[0]
    loops = Logits(lambda seen: word, N_VOCAB)
    good = Logits(lambda seen: eot if len(seen) >= prompt + 3 else other, N_VOCAB)
    states = {"trim": loops, "full": good}
    return ModelPorts(lambda mel: None, lambda cross: states[cross].fresh(), tokenizer, N_VOCAB, 448, None, check,
                      context_fallback=True), other


def test_a_trimmed_window_that_fails_is_decoded_again_on_the_full_window(tokenizer):
    ports, other = _context_ports(tokenizer)
    opts = LongformOptions(language="en", without_timestamps=True, temperature=(0.0, 0.5))
    info = TranscriptionInfo("en", None, 1.0, 1.0, None)
    result, loop, cross = decode_with_fallback("trim", ports, opts, "en", [], [], info, lambda: "full")
    assert (result.tokens, loop, cross, result.temperature) == ([other] * 3, None, "full", 0.0)
    assert info.context_fallbacks == 1
    # without the full window the loop goes on to the higher temperature, and the window stays trimmed
    info = TranscriptionInfo("en", None, 1.0, 1.0, None)
    result, loop, cross = decode_with_fallback("trim", ports, opts, "en", [], [], info)
    assert loop is not None and cross == "trim" and result.temperature == 0.5 and info.context_fallbacks == 0


def test_a_gated_plan_goes_dense_first_then_to_the_full_window(tokenizer):
    eot = tokenizer.eot
    word = tokenizer.encode(" yes")[0]
    ports, other = _context_ports(tokenizer)
    dense_over = {"trim": Logits(lambda seen: word, N_VOCAB), "full": ports.make_state("full")}
    check = DenseCheck(lambda cross: dense_over[cross].fresh(), eot)
    ports.check = check
    ports.make_state = lambda cross: Logits(lambda seen: word, N_VOCAB)  # the gated decoder loops everywhere
    opts = LongformOptions(language="en", without_timestamps=True, temperature=(0.0,))
    info = TranscriptionInfo("en", None, 1.0, 1.0, None)
    result, loop, cross = decode_with_fallback("trim", ports, opts, "en", [], [], info, lambda: "full")
    assert (result.tokens, cross, info.context_fallbacks) == ([other] * 3, "full", 1)
    assert check.counts.redone == 1  # the dense decoder over the trimmed window, counted once


def test_the_fixed_window_path_falls_back_to_the_full_window(tokenizer):
    from edgegate.frontend import N_FRAMES
    from edgegate.pipeline import MelFeatures, transcribe_windows
    from edgegate.plan import Plan, encoder_frames

    ports, other = _context_ports(tokenizer)
    features = MelFeatures.of(np.zeros(16000, np.float32))
    plan = Plan(np.ones(0, dtype=bool), 16, encoder_frames(features.request.frames, 16))
    seen = []

    def encode(mel):
        seen.append(mel.shape[-1])
        return "full" if mel.shape[-1] == N_FRAMES else "trim"

    for fallback, want, frames, count in ((True, [other] * 3, [plan.encoder_frames, N_FRAMES], 1),
                                          (False, None, [plan.encoder_frames], 0)):
        seen.clear()
        r = transcribe_windows(features, plan, encode, ports.make_state, tokenizer, N_VOCAB, "en", "transcribe", 1,
                               20, {}, 0.0, context_fallback=fallback)
        assert seen == frames and r.context_fallbacks == count
        assert r.tokens == want if want else len(r.tokens) == 20  # without it the loop runs to the token limit
        assert r.timings["encoder"] > 0 and r.timings["decoder"] > 0


def test_an_unchecked_factory_is_the_plain_state(tokenizer):
    state = Logits(lambda seen: tokenizer.eot if len(seen) >= 6 else tokenizer.encode(" yes")[0], N_VOCAB)
    ports = ModelPorts(lambda mel: None, lambda cross: state.fresh(), tokenizer, N_VOCAB, 448)
    result = decode_window(ports.new_state(None), tokenizer, N_VOCAB, DecodeOptions("en"))
    assert result.tokens and not isinstance(ports.new_state(None)(), CheckedState)


class Logits(Scripted):
    """A scripted state over a real vocabulary size; ``fresh()`` starts it again."""

    def __init__(self, script, n_vocab: int):
        super().__init__(script)
        self.n_vocab = n_vocab

    def fresh(self) -> Logits:
        return Logits(self.script, self.n_vocab)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.seen.extend(int(t) for t in tokens[0])
        logits = np.zeros((tokens.shape[0], self.n_vocab), np.float32)
        logits[:, self.script(self.seen)] = 20.0
        return logits
