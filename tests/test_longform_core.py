"""The long-form core without real weights: timestamp rules, segment cutting, seek, fallback, loop guard,
alignment pieces, VAD time mapping, streamed log-mel, files and formats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from edgegate.alignment import alignment_heads, dtw, median_filter
from edgegate.audiostream import AudioWarning, FileSource, SampleSource
from edgegate.decoding import TokenRules
from edgegate.errors import AudioError, EdgegateError
from edgegate.formats import render, to_srt, to_tsv, to_vtt, write_atomic
from edgegate.longform import LongformOptions, ModelPorts, _Window, split_segments, transcribe_long
from edgegate.melsource import ArrayMel, StreamedMel
from edgegate.pipeline import Segment, TranscriptionInfo
from edgegate.repetition import find_repetition, longest_run
from edgegate.vad_filter import SpeechMap, SpeechSource


class Tok:
    """A stand-in tokenizer: 100 text tokens, then the specials, then 1501 timestamps."""

    eot, sot, translate, transcribe, sot_lm, sot_prev, no_timestamps, no_speech = range(100, 108)
    timestamp_begin = 108
    language_codes, language_tokens = ["en"], [99]

    def suppress_tokens(self):
        return [self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_timestamps,
                self.no_speech]

    def suppress_at_begin(self):
        return [0, self.eot]

    def sot_sequence(self, language, task="transcribe", timestamps=False):
        return [self.sot, 99, self.transcribe] + ([] if timestamps else [self.no_timestamps])

    def normalize_language(self, language):
        return language

    def encode(self, text):
        return [1 + (ord(c) % 90) for c in text]

    def decode(self, tokens):
        return "".join(f" w{t}" for t in tokens if t < self.eot)


TOK = Tok()
N_VOCAB = TOK.timestamp_begin + 1501
TS = TOK.timestamp_begin


def rules(**kw):
    return TokenRules(TOK, N_VOCAB, timestamps=True, **kw)


def test_first_token_is_a_timestamp_within_the_initial_bound():
    logits = np.zeros((1, N_VOCAB), np.float32)
    logits[0, 5] = 50.0  # a text token would win without the rules
    out = rules()(logits, [[]])
    allowed = np.isfinite(out[0]).nonzero()[0]
    assert allowed.min() == TS and allowed.max() == TS + 50  # <|0.00|> .. <|1.00|>
    assert np.isfinite(rules(max_initial_timestamp=None)(logits, [[]])[0, TS + 1500])


def test_timestamps_pair_up_and_never_go_back():
    logits = np.zeros((1, N_VOCAB), np.float32)
    after_text = rules()(logits, [[TS + 10, 5, 6]])  # text after <|0.20|>: may close at >= 0.22 or continue
    assert not np.isfinite(after_text[0, TS:TS + 11]).any() and np.isfinite(after_text[0, TS + 11])
    closing = rules()(logits, [[TS + 10, 5, TS + 30]])  # a single timestamp after text: close it or end
    assert not np.isfinite(closing[0, :TOK.eot]).any()
    assert np.isfinite(closing[0, TS + 30]) and not np.isfinite(closing[0, TS + 29])
    pair = rules()(logits, [[TS + 10, 5, TS + 30, TS + 30]])  # after a pair: text must follow
    assert not np.isfinite(pair[0, TS:]).any() and np.isfinite(pair[0, 5])


def test_timestamp_forced_when_their_mass_beats_every_text_token():
    logits = np.full((1, N_VOCAB), -10.0, np.float32)
    logits[0, 5] = 2.0
    logits[0, TS + 20: TS + 60] = 0.5  # each below the text token, together above it
    out = rules()(logits, [[TS, 7]])
    assert not np.isfinite(out[0, :TS]).any()


def window(seek=0, size=3000):
    return _Window(seek, size, None)


def test_segments_cut_at_timestamp_pairs_and_seek_to_the_last_complete_one():
    toks = [TS, 1, 2, TS + 100, TS + 100, 3, 4, TS + 250, TS + 260, 5]  # last segment unfinished
    parts, seek, single = split_segments(toks, window(seek=1000), TS, TOK.eot)
    assert [(round(a, 2), round(b, 2)) for a, b, _ in parts] == [(10.0, 12.0), (12.0, 15.0)]
    assert seek == 1000 + 250 * 2 and not single
    toks = [TS, 1, 2, TS + 100, TS + 100, 3, TS + 200]  # ends on a single timestamp: nothing after it
    parts, seek, single = split_segments(toks, window(), TS, TOK.eot)
    assert single and seek == 3000 and len(parts) == 2
    parts, seek, _ = split_segments([TS, 1, 2], window(size=1200), TS, TOK.eot)  # no pair: the whole window
    assert parts[0][:2] == (0.0, 12.0) and seek == 1200


def test_repetition_guard_finds_loops_but_not_speech():
    loop = [5, 6, 7] * 6
    assert find_repetition([1, 2] + loop, TOK.eot, limit=4) == 5  # second "5 6 7" starts at index 5
    with_stamps = [TS, 5, 6, TS + 40, TS + 40, 5, 6, TS + 80, TS + 80, 5, 6, TS + 99, TS + 99, 5, 6]
    assert find_repetition(with_stamps, TOK.eot, limit=4) == 5
    assert find_repetition([1, 2, 3, 1, 2, 3, 4, 5], TOK.eot, limit=4) is None
    assert longest_run("a b c a b c a b c d".split()) == 3 and longest_run("a b c".split()) == 1


class ScriptedState:
    """Emits a fixed token script per temperature (ignores the audio)."""

    def __init__(self, script, stats):
        self.script, self.stats, self.i = script, stats, -1

    def step(self, tokens):
        self.stats["steps"] += 1
        logits = np.full((tokens.shape[0], N_VOCAB), -30.0, np.float32)
        if tokens.shape[1] > 1 or tokens[0, 0] == TOK.sot:
            if tokens[0, -1] == TOK.sot:  # the no-speech position
                logits[:, TOK.no_speech] = self.stats.get("no_speech_logit", -30.0)
                return logits
        self.i += 1
        want = self.script[self.i] if self.i < len(self.script) else TOK.eot
        logits[:, want] = 30.0
        return logits

    def reorder(self, index):
        pass


def scripted_ports(scripts, stats):
    def make_state(cross):
        return ScriptedState(scripts[stats["temperature_index"]], stats)

    return ModelPorts(lambda mel: mel.shape, make_state, TOK, N_VOCAB)


def test_fallback_replaces_a_looping_window_and_the_loop_is_never_printed(monkeypatch):
    import edgegate.longform as longform

    loop = [TS] + [5, 6, 7] * 20 + [TS + 900]
    good = [TS, 1, 2, 3, TS + 100]
    stats = {"steps": 0, "temperature_index": 0}
    real = longform.decode_window

    def counting(new_state, tok, n_vocab, opts):
        stats["temperature_index"] = min(1, int(opts.temperature > 0))
        return real(new_state, tok, n_vocab, opts)

    monkeypatch.setattr(longform, "decode_window", counting)
    audio = np.zeros(16000 * 5, np.float32)
    segments, info = transcribe_long(audio, scripted_ports([loop, good], stats),
                                     LongformOptions(language="en", log_prob_threshold=None))
    out = list(segments)
    assert [s.temperature for s in out] == [0.2] and out[0].text == " w1 w2 w3"
    # Only temperature 0 is allowed: the loop is cut after its first occurrence instead of printed.
    segments, _ = transcribe_long(audio, scripted_ports([loop, good], stats),
                                  LongformOptions(language="en", temperature=0.0, log_prob_threshold=None))
    words = "".join(s.text for s in segments).split()
    assert longest_run(words) == 1 and words[:3] == ["w5", "w6", "w7"]


def test_silent_window_is_skipped_by_the_no_speech_rule(monkeypatch):
    stats = {"steps": 0, "temperature_index": 0, "no_speech_logit": 40.0}
    audio = np.zeros(16000 * 5, np.float32)
    ports = scripted_ports([[TS, 1, 2, TS + 100], [TS, 1, 2, TS + 100]], stats)
    segments, _ = transcribe_long(audio, ports, LongformOptions(language="en", log_prob_threshold=0.5))
    assert list(segments) == []  # no-speech above 0.6 and a log-prob below the threshold: silence


def test_options_are_checked():
    with pytest.raises(EdgegateError, match="temperature"):
        LongformOptions(temperature=(0.0, 5.0)).validate()
    with pytest.raises(EdgegateError, match="word_timestamps"):
        LongformOptions(word_timestamps=True, without_timestamps=True).validate()


def test_dtw_and_median_filter_match_plain_loops():
    rng = np.random.default_rng(0)
    x = rng.random((7, 19))
    rows, cols = dtw(x)
    cost = np.full((8, 20), np.inf)
    cost[0, 0] = 0
    for i in range(1, 8):
        for j in range(1, 20):
            cost[i, j] = x[i - 1, j - 1] + min(cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1])
    assert rows[0] == 0 and cols[0] == 0 and rows[-1] == 6 and cols[-1] == 18
    assert np.all(np.diff(rows) >= 0) and np.all(np.diff(cols) >= 0)
    assert abs(x[rows, cols].sum() - cost[7, 19]) < 1e-5
    y = rng.random((2, 3, 30)).astype(np.float32)
    padded = np.pad(y, ((0, 0), (0, 0), (3, 3)), mode="reflect")
    naive = np.stack([np.median(padded[..., i:i + 7], axis=-1) for i in range(30)], axis=-1)
    assert np.allclose(median_filter(y, 7), naive)


def test_alignment_heads_of_whisper_base():
    from edgegate.alignment import ALIGNMENT_HEADS

    heads = alignment_heads(6, 8, ALIGNMENT_HEADS["whisper-base"])
    assert heads.shape[0] == 2 and heads[0].min() >= 1 and heads.shape[1] > 3
    whisper = pytest.importorskip("whisper")
    mask = np.zeros((6, 8), bool)
    mask[tuple(heads)] = True
    ref = np.frombuffer(__import__("gzip").decompress(__import__("base64").b85decode(
        whisper._ALIGNMENT_HEADS["base"])), dtype=bool).reshape(6, 8)
    assert (mask == ref).all()


def test_speech_map_and_joined_speech():
    sr = 16000
    chunks = [(sr * 2, sr * 5), (sr * 30, sr * 31)]
    m = SpeechMap(chunks)
    assert m.original(0.0) == 2.0 and m.original(2.5) == 4.5
    assert m.original(3.0) == 30.0 and m.original(3.0, is_end=True) == 5.0 and m.original(3.5) == 30.5
    x = np.arange(sr * 40, dtype=np.float32)
    joined = np.concatenate(list(SpeechSource(SampleSource(x), chunks).open(block=sr)))
    assert np.array_equal(joined, np.concatenate([x[sr * 2: sr * 5], x[sr * 30: sr * 31]]))


@pytest.mark.parametrize("n", [150, 16000 * 7 + 13, 16000 * 65 + 77])
def test_streamed_log_mel_equals_the_whole_one(n):
    x = (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32)
    whole, streamed = ArrayMel(x), StreamedMel(SampleSource(x))
    assert streamed.content_frames == whole.content_frames == n // 160
    for start in range(0, whole.mel.shape[1], 2900):
        # Not bit-equal everywhere: BLAS may block the mel matmul differently for a 3000-frame chunk than for
        # the whole recording (seen on CI's CPU), which moves the last float32 bit; a frame offset moves far more.
        np.testing.assert_allclose(streamed.frames(start, start + 3000), whole.frames(start, start + 3000),
                                   rtol=0, atol=1e-5)


def test_file_source_errors_and_truncation_warning(tmp_path):
    sf.write(tmp_path / "ok.wav", np.zeros(48000, np.float32), 16000, subtype="PCM_16")
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FileSource(tmp_path / "cut.wav")
    messages = [str(w.message) for w in caught if issubclass(w.category, AudioWarning)]
    assert len(messages) == 1 and "48000" in messages[0] and "23989" in messages[0] and "\n" not in messages[0]
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    for name, words in [("empty.wav", "empty"), ("text.wav", "cannot decode"), ("missing.wav", "not found")]:
        with pytest.raises(AudioError, match=words):
            FileSource(tmp_path / name)
    with pytest.raises(AudioError, match="non-finite"):
        list(FileSource(tmp_path / "nan.wav").open())


def test_formats_have_real_cues(tmp_path):
    segs = [Segment(0, 0.0, 2.5, " Hello there.", []), Segment(1, 3661.25, 3663.0, " Bye.", [])]
    srt = to_srt(segs)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n") and "01:01:01,250 --> 01:01:03,000" in srt
    assert to_vtt(segs).startswith("WEBVTT\n\n00:00.000 --> 00:02.500\nHello there.")
    assert to_tsv(segs).splitlines() == ["start\tend\ttext", "0\t2500\tHello there.", "3661250\t3663000\tBye."]
    info = TranscriptionInfo("en", 0.9, 3663.0, 3663.0, None)
    assert '"text": "Hello there. Bye."' in render("json", segs, info)
    write_atomic(tmp_path / "out" / "a.srt", srt)
    assert (tmp_path / "out" / "a.srt").read_text() == srt and not list((tmp_path / "out").glob(".*"))


def test_long_form_core_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import edgegate.longform, edgegate.formats, edgegate.vad_filter, edgegate.melsource\n"
            "import edgegate.audiostream, edgegate.alignment, edgegate.repetition\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_loop_across_windows_is_cut_too():
    from edgegate.longform import _drop_repeats, _LoopState

    st = _LoopState(all_tokens=[1, 2, 3])
    seg = [Segment(i, i, i + 1, " Thank you.", []) for i in range(6)]
    kept = [s for i in range(6) for s in _drop_repeats([seg[i]], st, 4)]
    assert [s.id for s in kept] == [0, 1, 2] and st.prompt_reset_since == 3
    assert len(_drop_repeats([Segment(9, 9, 10, " Something else.", [])], st, 4)) == 1
