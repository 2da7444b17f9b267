"""Live transcription: microphone (or a replayed file) -> VAD -> partial and final lines.

One path for every source::

    capture thread (PortAudio callback)  ─┐
                                          ├─> queue of blocks -> resample to 16 kHz -> Segmenter (VAD)
    file reader thread (--input FILE)    ─┘        -> partials while speech goes on -> final per utterance

The capture callback only copies the block into a bounded queue (never blocks; a full queue or a
PortAudio input overflow is counted and reported). One consumer thread does everything else,
so transcription never runs concurrently with itself. While speech continues the growing
utterance is re-transcribed every ``partial_interval`` seconds (only when the consumer is
caught up, so partials never pile up); as soon as a pause reaches ``post_pad`` the utterance
is transcribed with the final settings ("tentative"); if the pause then becomes an endpoint
with the same audio, that result is the final line at once, otherwise it was just a better
partial.

Times: every block is stamped when it arrives. Live (and ``--input`` at real-time pace) the
clock is the wall clock. With ``--fast`` replay the clock is simulated: it advances with the
audio and with each measured transcription time, so the latencies are what a real-time run
on this machine would see, without waiting for them.

Any transcriber with ``transcribe(audio, sample_rate, language=..., task=..., budget=...)``
returning :class:`edgegate.pipeline.Transcription` works; :func:`load_transcriber` returns the
torch-free runtime's Session for a bundle or the PyTorch model otherwise.

The package, one job per file: ``sources`` (microphone, file replay), ``edgegate.vad``
(utterance segmentation), ``engine`` (the live transcriber: partials, tentatives, finals),
``events`` (what it yields and its summary), ``transcribers`` (the models behind it),
``terminal`` (key presses and the console of ``edgegate live``).

    from edgegate.live import LiveTranscriber, FileSource, MicSource, load_transcriber
    live = LiveTranscriber(load_transcriber(model="whisper-base"), language="en")
    for event in live.run(MicSource()):          # or FileSource("talk.wav", realtime=False)
        if isinstance(event, Final):
            print(event.text)
    print(live.summary)
"""

from __future__ import annotations

from edgegate.live.engine import BUDGET_MAX, BUDGET_STEP, LiveTranscriber
from edgegate.live.events import Final, LiveSummary, Notice, Partial
from edgegate.live.sources import NO_DEVICE_MESSAGE, AudioSource, Block, FileSource, MicSource, list_input_devices
from edgegate.live.terminal import Console, KeyReader, budget_keys, show_event
from edgegate.live.transcribers import SessionTranscriber, TorchTranscriber, Transcriber, load_transcriber

__all__ = [
    "Transcriber", "TorchTranscriber", "SessionTranscriber", "load_transcriber",
    "Block", "AudioSource", "MicSource", "FileSource", "list_input_devices", "NO_DEVICE_MESSAGE",
    "Partial", "Final", "Notice", "LiveSummary", "LiveTranscriber", "KeyReader", "Console", "budget_keys",
    "show_event", "BUDGET_STEP", "BUDGET_MAX",
]
