"""The live path (edgegate.live, ``edgegate live``): engine timing with a fake model, microphone
capture with a fake sounddevice, CLI errors, and an end-to-end replay with Whisper base."""

from __future__ import annotations

import re
import sys
import threading
import time
import types

import numpy as np
import pytest

from edgegate.errors import BudgetError, EdgegateError
from edgegate.live import (
    NO_DEVICE_MESSAGE,
    FileSource,
    Final,
    LiveTranscriber,
    MicSource,
    Notice,
    Partial,
    TorchTranscriber,
)
from edgegate.pipeline import Transcription
from edgegate.vad import EnergyDetector

SR = 16000


def tone(seconds: float, amp: float = 0.3, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def silence(seconds: float, rate: int = SR) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


class FakeModel:
    """Says how long the audio was; sleeps ``delay`` s to stand for compute."""

    supports_budget = True
    accepts_audio_ctx = False
    n_modules = 4
    default_budget = None

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[tuple[int, float | None]] = []

    def transcribe(self, audio, sample_rate=16000, *, language=None, task="transcribe", budget=None):
        self.calls.append((len(audio), budget))
        time.sleep(self.delay)
        mask = [True, False, True, True] if budget else None
        return Transcription(f"{len(audio) / sample_rate:.2f} s", [], language or "en", 1.0,
                             len(audio) / sample_rate, task, mask, {})

    def describe(self):
        return "fake"


def run_events(live, source):
    events = list(live.run(source))
    return ([e for e in events if isinstance(e, Final)], [e for e in events if isinstance(e, Partial)],
            [e for e in events if isinstance(e, Notice)])


# --------------------------------------------------------------------------- engine


def test_engine_finals_partials_and_simulated_latency():
    audio = np.concatenate([silence(1.0), tone(2.5), silence(1.5), tone(1.2), silence(1.0)])
    model = FakeModel(delay=0.05)
    live = LiveTranscriber(model, vad=EnergyDetector(), partial_interval=1.0)
    finals, partials, _ = run_events(live, FileSource(audio, realtime=False))
    assert [round(f.start_s, 1) for f in finals] == [0.7, 4.7]
    assert [f.index for f in finals] == [1, 2]
    # partials while the 2.5-s tone goes on, then a tentative at the pause that becomes the final
    assert any(not p.tentative for p in partials) and any(p.tentative for p in partials)
    for f in finals:
        assert f.reused and f.compute >= 0.05
        assert f.text == f"{f.end_s - f.start_s:.2f} s"
        # endpoint after 0.5 s of silence (+ up to one 0.1-s block): that is the final's latency;
        assert 0.5 <= f.latency <= 0.65
        # the same text was on screen after the 0.2-s post-pad + one block + compute
        assert 0.2 + 0.05 <= f.text_latency <= 0.45
        assert (f.kept, f.total) == (4, 4)
    s = live.summary
    assert s.utterances == 2 and s.tentatives_reused == 2
    assert s.audio_seconds == pytest.approx(len(audio) / SR)
    assert 0 < s.rtf < 1 and s.latency_median == pytest.approx(np.median(s.latencies))
    assert "2 utterances" in s.format()


def test_engine_without_partials_transcribes_each_utterance_once():
    audio = np.concatenate([silence(0.5), tone(1.0), silence(1.0), tone(1.0), silence(1.0)])
    model = FakeModel()
    live = LiveTranscriber(model, vad=EnergyDetector(), partials=False)
    finals, partials, _ = run_events(live, FileSource(audio, realtime=False))
    assert len(finals) == 2 and partials == [] and len(model.calls) == 2
    assert not any(f.reused for f in finals)


def test_engine_real_time_replay_uses_the_wall_clock():
    audio = np.concatenate([silence(0.3), tone(0.6), silence(0.8)])
    live = LiveTranscriber(FakeModel(), vad=EnergyDetector(), partials=False)
    t0 = time.monotonic()
    finals, _, _ = run_events(live, FileSource(audio, realtime=True))
    assert time.monotonic() - t0 >= len(audio) / SR - 0.15  # paced like a microphone
    assert len(finals) == 1 and 0.45 <= finals[0].latency <= 0.9


def test_budget_changes_apply_to_the_next_transcription():
    model = FakeModel()
    live = LiveTranscriber(model, vad=EnergyDetector(), partials=False, budget=0.2)
    assert live.step_budget(+0.1) == pytest.approx(0.3)
    assert live.step_budget(-0.5) == 0.0
    assert live.set_budget(0.4) == 0.4
    for _ in range(10):
        live.step_budget(+0.1)
    assert live.budget == pytest.approx(0.9)  # clamped
    live.set_budget(0.5)
    finals, _, _ = run_events(live, FileSource(np.concatenate([silence(0.5), tone(1.0), silence(1.0)]),
                                               realtime=False))
    assert model.calls[-1][1] == 0.5 and finals[0].budget == 0.5 and (finals[0].kept, finals[0].total) == (3, 4)
    with pytest.raises(BudgetError):
        live.set_budget(1.5)


def test_torch_adapter_refuses_budgets_without_a_predictor():
    class Plain:
        gate_names = ["a", "b"]

        def transcribe(self, audio, sample_rate=16000, language=None, task="transcribe", audio_ctx=None):
            return Transcription("x", [], "en", None, 1.0)

    adapter = TorchTranscriber(Plain())
    assert not adapter.supports_budget and adapter.accepts_audio_ctx and adapter.n_modules == 2
    assert adapter.transcribe(np.zeros(16000, np.float32), budget=0.0).text == "x"
    with pytest.raises(BudgetError, match="gate predictor"):
        adapter.transcribe(np.zeros(16000, np.float32), budget=0.3)
    with pytest.raises(BudgetError, match="gate predictor"):
        LiveTranscriber(adapter, budget=0.3, vad=EnergyDetector())


class TwoPaths:
    """A model with the two decoding paths: fixed windows (partials) and long-form text (finals)."""

    gate_names = ["a", "b"]

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def transcribe_windows(self, audio, sample_rate=16000, language=None, task="transcribe", audio_ctx=None):
        self.calls.append(("windows", {"audio_ctx": audio_ctx}))
        return Transcription("partial", [], "en", None, len(audio) / sample_rate)

    def transcribe_text(self, audio, sample_rate=16000, **kwargs):
        self.calls.append(("long-form", kwargs))
        return Transcription("final", [], "en", None, len(audio) / sample_rate)


def test_finals_take_the_long_form_decoding_and_partials_the_fixed_windows():
    from edgegate.live import SessionTranscriber

    audio = np.concatenate([silence(0.5), tone(2.5), silence(1.2)])
    model = TwoPaths()
    live = LiveTranscriber(TorchTranscriber(model), vad=EnergyDetector(), partial_interval=0.5, audio_ctx="auto",
                           partial_ctx=16)
    finals, partials, _ = run_events(live, FileSource(audio, realtime=False))
    assert [f.text for f in finals] == ["final"] and partials
    # a tentative line (the speech has ended) is the final's decoding, shown early and then reused
    assert all(p.text == ("final" if p.tentative else "partial") for p in partials)
    assert {kind for kind, _ in model.calls} == {"windows", "long-form"}
    assert all(k["audio_ctx"] == ("auto" if kind == "long-form" else 16) for kind, k in model.calls)

    class FakeSession(TwoPaths):
        bundle = None
        has_predictor = False
        budget = None

        def transcribe_windows(self, audio, sample_rate=16000, language=None, task="transcribe", budget=None,
                               audio_ctx="auto"):
            return super().transcribe_windows(audio, sample_rate, language, task, audio_ctx)

    session = FakeSession()
    finals, _, _ = run_events(LiveTranscriber(SessionTranscriber(session), vad=EnergyDetector(), partials=False),
                              FileSource(audio, realtime=False))
    assert [f.text for f in finals] == ["final"] and [kind for kind, _ in session.calls] == ["long-form"]


def test_dense_check_mode_reaches_both_paths_and_bad_modes_are_refused():
    class Checked(TwoPaths):
        def transcribe_windows(self, audio, sample_rate=16000, language=None, task="transcribe", audio_ctx=None,
                               **kwargs):
            self.calls.append(("windows", kwargs))
            return Transcription("partial", [], "en", None, len(audio) / sample_rate)

    audio = np.concatenate([silence(0.5), tone(2.5), silence(1.2)])
    model = Checked()
    live = LiveTranscriber(TorchTranscriber(model), vad=EnergyDetector(), partial_interval=0.5, dense_check="all")
    run_events(live, FileSource(audio, realtime=False))
    assert {kind for kind, _ in model.calls} == {"windows", "long-form"}
    assert all(k["dense_check"] == "all" for _, k in model.calls)
    model = Checked()  # unset: the model's own default, so nothing is passed
    run_events(LiveTranscriber(TorchTranscriber(model), vad=EnergyDetector(), partial_interval=0.5),
               FileSource(audio, realtime=False))
    assert model.calls and all("dense_check" not in k for _, k in model.calls)
    with pytest.raises(EdgegateError, match="unknown dense check 'some'"):
        LiveTranscriber(TorchTranscriber(Checked()), vad=EnergyDetector(), dense_check="some")


def test_transcription_errors_are_reported_and_the_stream_goes_on():
    class Flaky(FakeModel):
        def transcribe(self, audio, *a, **k):
            from edgegate.errors import AudioError

            if not self.calls:
                self.calls.append((0, None))
                raise AudioError("boom")
            return super().transcribe(audio, *a, **k)

    audio = np.concatenate([silence(0.5), tone(1.0), silence(1.0), tone(1.0), silence(1.0)])
    live = LiveTranscriber(Flaky(), vad=EnergyDetector(), partials=False)
    finals, _, notices = run_events(live, FileSource(audio, realtime=False))
    assert len(finals) == 1 and live.summary.failed == 1
    assert any("boom" in n.message for n in notices)


# --------------------------------------------------------------------------- microphone (fake PortAudio)


class _Flags:
    def __init__(self, overflow=False):
        self.input_overflow = overflow

    def __bool__(self):
        return self.input_overflow


def fake_sounddevice(devices, signal=None, rate=48000, unplug_after=None, channels=1):
    """A stand-in for the sounddevice module: one device that takes only ``rate`` and ``channels``."""
    sd = types.ModuleType("sounddevice")
    fake_channels = channels

    class PortAudioError(Exception):
        pass

    class InputStream:
        def __init__(self, device, channels, samplerate, dtype, blocksize, callback, finished_callback):
            self.rate, self.block, self.cb, self.done = samplerate, blocksize, callback, finished_callback
            self.channels = channels
            self.active = False
            self._stop = threading.Event()

        def start(self):
            self.active = True
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self):
            x = signal if signal is not None else np.zeros(self.rate, np.float32)
            n_blocks = len(x) // self.block
            for i in range(n_blocks):
                if self._stop.is_set():
                    return
                if unplug_after is not None and i == unplug_after:
                    self.active = False
                    self.done()
                    return
                block = np.repeat(x[i * self.block:(i + 1) * self.block, None], self.channels, axis=1)
                self.cb(block, self.block, None, _Flags(i == 3))
                time.sleep(0.01)  # 10x faster than real time
            self.active = False
            self.done()

        def abort(self):
            self._stop.set()

        def close(self):
            pass

    def query_devices(device=None, kind=None):
        if device is None:
            return devices
        for d in devices:
            if device == d["index"] or (isinstance(device, str) and device in d["name"]):
                return d
        raise ValueError(f"No input device matching {device!r}")

    def check_input_settings(device=None, channels=None, samplerate=None, dtype=None):
        if samplerate != rate:
            raise PortAudioError("Invalid sample rate")
        if channels != fake_channels:
            raise PortAudioError("Invalid number of channels")

    sd.PortAudioError = PortAudioError
    sd.InputStream = InputStream
    sd.query_devices = query_devices
    sd.query_hostapis = lambda: [{"name": "ALSA"}]
    sd.check_input_settings = check_input_settings
    sd.default = types.SimpleNamespace(device=[0, 0])
    return sd


MIC = [{"index": 0, "name": "Fake USB mic", "hostapi": 0, "max_input_channels": 1, "default_samplerate": 48000.0}]


def test_microphone_path_resamples_counts_overflows_and_survives_unplugging(monkeypatch):
    sig = np.concatenate([silence(0.5, 48000), tone(1.0, rate=48000), silence(1.0, 48000), tone(1.0, rate=48000)])
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(MIC, sig, unplug_after=len(sig) // 4800 - 1))
    live = LiveTranscriber(FakeModel(), vad=EnergyDetector(), partials=False)
    source = MicSource(stall_timeout=0.5)
    finals, _, notices = run_events(live, source)
    assert source.rate == 48000
    # the first tone is final; the second was cut by the unplug and flushed
    assert len(finals) == 2 and finals[0].start_s == pytest.approx(0.2, abs=0.07)
    assert live.summary.overflows == 1
    assert any("overflow" in n.message for n in notices)
    assert any(n.level == "error" and "unplugged" in n.message for n in notices)
    assert live.summary.error and "unplugged" in live.summary.error


def test_stereo_only_16k_microphone_is_mixed_down(monkeypatch):
    sig = np.concatenate([silence(0.5), tone(1.0), silence(1.0)])
    stereo = [dict(MIC[0], max_input_channels=2)]
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(stereo, sig, rate=SR, channels=2))
    live = LiveTranscriber(FakeModel(), vad=EnergyDetector(), partials=False)
    source = MicSource(stall_timeout=0.5)
    finals, _, _ = run_events(live, source)
    assert (source.rate, source.channels) == (SR, 2) and len(finals) == 1


def test_microphone_with_no_devices_raises_the_friendly_message(monkeypatch):
    from edgegate.errors import AudioError

    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    with pytest.raises(AudioError, match="no audio input devices found"):
        MicSource().start(__import__("queue").Queue())


# --------------------------------------------------------------------------- CLI


def cli(argv, capsys):
    from edgegate.commands.live import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_devices_without_devices_prints_the_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    code, out, err = cli(["--list-devices"], capsys)
    assert code == 1 and NO_DEVICE_MESSAGE in err and "apt-get install libportaudio2" in err
    assert "Traceback" not in err + out


def test_list_devices_without_portaudio_prints_the_hint(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    code, out, err = cli(["--list-devices"], capsys)
    assert code == 1 and "libportaudio2" in err and "Traceback" not in err


def test_list_devices_lists_inputs(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(MIC))
    code, out, err = cli(["--list-devices"], capsys)
    assert code == 0 and "Fake USB mic" in out and "(default)" in out


def test_no_microphone_is_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice([]))
    code, out, err = cli([], capsys)
    assert code == 1 and err.strip().splitlines() == [f"error: {NO_DEVICE_MESSAGE}"]


@pytest.mark.parametrize("content", [None, b"RIFF\x00\x00garbage" * 50, b""])
def test_missing_or_garbage_input_is_one_line_error(tmp_path, capsys, content):
    path = tmp_path / "in.wav"
    if content is not None:
        path.write_bytes(content)
    code, out, err = cli(["--input", str(path), "--fast"], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert out == ""


def test_fast_needs_input(capsys):
    code, _, err = cli(["--fast"], capsys)
    assert code == 1 and err.startswith("error: --fast")


def test_registered_in_the_top_level_cli():
    from edgegate import cli as top

    if "live" not in top.COMMAND_MODULES:
        pytest.skip("edgegate.cli does not list the live command yet")
    help_text = top.build_parser()._subparsers._group_actions[0].choices["live"].format_help()
    assert "--list-devices" in help_text and "--input" in help_text


@pytest.mark.slow
def test_end_to_end_replay_of_two_utterances(librivox, tmp_path, capsys):
    import soundfile as sf

    from edgegate.textnorm import wer

    (a, ref_a), (b, ref_b) = sorted(librivox, key=lambda c: sf.info(c[0]).duration)[:2]
    wav = tmp_path / "two_utterances.wav"
    sf.write(wav, np.concatenate([silence(0.5), sf.read(a, dtype="float32")[0], silence(1.5),
                                  sf.read(b, dtype="float32")[0], silence(0.5)]), SR)
    code, out, err = cli(["--input", str(wav), "--fast", "--language", "en", "--threads", "2"], capsys)
    assert code == 0, err
    finals = [m.group(1) for m in (re.match(r"^\[\s*[\d.]+ ->\s*[\d.]+\] (.*)  \(latency [\d.]+ s, ", line)
                                   for line in out.splitlines()) if m]
    assert len(finals) == 2, out
    for ref, hyp in zip((ref_a, ref_b), finals, strict=True):
        assert wer([ref], [hyp]) <= 0.15, (ref, hyp)
    assert "2 utterances" in err and "real-time factor" in err and "Traceback" not in err


@pytest.mark.slow
def test_budget_with_the_pytorch_model_is_refused(tmp_path, capsys):
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, np.concatenate([silence(0.5), tone(0.5)]), SR)
    code, _, err = cli(["--input", str(wav), "--fast", "--budget", "0.3"], capsys)
    assert code == 1 and err.strip().splitlines() == [err.strip()] and "gate predictor" in err


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A tiny random Whisper + gate predictor exported as a bundle (runs on the torch-free runtime)."""
    pytest.importorskip("torch")
    try:
        from edgegate.export.core import export_bundle
        from edgegate.runtimes.session import Session  # noqa: F401

        from tiny import tiny_predictor, tiny_whisper
    except ImportError as exc:
        pytest.skip(f"exporter or runtime not available: {exc}")
    model = tiny_whisper()
    pred = tiny_predictor(len(model.gate_names), seed=3)
    out = tmp_path_factory.mktemp("live_bundle") / "tiny"
    return export_bundle(out, "cpu", model, gates=pred, budget=0.4, progress=False, log=lambda m: None)


@pytest.mark.slow
def test_bundle_on_the_runtime_with_budget_changes(tiny_bundle, tmp_path, capsys):
    import json

    import soundfile as sf

    from edgegate.live import SessionTranscriber, load_transcriber

    t = load_transcriber(tiny_bundle, threads=1)
    assert isinstance(t, SessionTranscriber) and t.supports_budget and t.default_budget == pytest.approx(0.4)
    live = LiveTranscriber(t, language="en", vad=EnergyDetector(), partials=False)
    assert live.step_budget(+0.1) == pytest.approx(0.5)  # steps from the bundle's default
    wav = tmp_path / "tones.wav"
    sf.write(wav, np.concatenate([silence(0.5), tone(1.0), silence(1.0), tone(1.0), silence(1.0)]), SR)
    code, out, err = cli(["--bundle", str(tiny_bundle), "--input", str(wav), "--fast", "--language", "en",
                          "--budget", "0.3", "--vad", "energy", "--format", "jsonl", "--threads", "1"], capsys)
    assert code == 0, err
    finals = [json.loads(line) for line in out.splitlines() if '"final"' in line]
    assert len(finals) == 2
    for f in finals:
        assert f["budget"] == 0.3 and f["kept"] < f["total"]
    code, out, err = cli(["--bundle", str(tmp_path / "nope"), "--input", str(wav), "--fast"], capsys)
    assert code == 1 and err.startswith("error: bundle not found")


@pytest.mark.slow
def test_live_path_on_a_bundle_never_imports_torch(tiny_bundle, librivox):
    import subprocess

    code = (
        "import sys\n"
        "from edgegate.live import FileSource, Final, LiveTranscriber, load_transcriber\n"
        f"t = load_transcriber({str(tiny_bundle)!r}, threads=1)\n"
        "live = LiveTranscriber(t, language='en', vad='auto')\n"
        f"events = list(live.run(FileSource({str(librivox[1][0])!r}, realtime=False)))\n"
        "assert any(isinstance(e, Final) for e in events), events\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', live.detector.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]


@pytest.mark.slow
def test_a_final_never_prints_a_decoding_loop(base_model):
    """At a trimmed context (32 positions) whisper-base loops on this card clip at temperature 0; the
    final line goes through the long-form fallback and loop guard, so it does not."""
    from test_longform_recording import all_clips, read16k

    from edgegate.repetition import longest_run
    from edgegate.textnorm import wer

    path, ref = next((p, r) for p, r in all_clips() if p.name.endswith("0930.wav"))
    live = LiveTranscriber(TorchTranscriber(base_model), language="en", vad=EnergyDetector(), partials=False,
                           audio_ctx=32)
    finals, _, _ = run_events(live, FileSource(np.concatenate([silence(0.5), read16k(path), silence(1.0)]),
                                               realtime=False))
    words = " ".join(f.text for f in finals).split()
    assert words and longest_run(words) < 3, words
    assert wer([ref], [" ".join(words)]) <= 0.1, words
