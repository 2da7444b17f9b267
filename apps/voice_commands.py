"""Voice commands for a device: the transcriber embedded in an app that does something.

A pattern for products: pick the device profile (threads, budget) the app ships with, load the
transcriber once, run the live engine on the microphone, and map each final line to an action
with fuzzy matching, so that "Turn the lights on." or "lights on" or Whisper's "Lights, on!"
all switch the lights on, while "lights off" does not. Matching is word by word (each word
close enough, the phrase close enough on average), so similar-looking phrases that differ in
one short word ("on" / "off") stay apart; longer phrases win over shorter ones inside them.

    python apps/voice_commands.py --language en                          # microphone, profile cpu
    python apps/voice_commands.py --bundle bundles/whisper-base-cpu --profile cpu
    python apps/voice_commands.py --input commands.wav --fast            # replay a recording

The PyTorch model has no gate predictor: with it the profile's budget is set aside (dense);
a bundle exported with gates runs at the profile's budget.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from edgegate.errors import EdgegateError
from edgegate.live import FileSource, Final, LiveTranscriber, MicSource, Notice, load_transcriber
from edgegate.textnorm import normalize_english

# action -> the phrases that trigger it
COMMANDS: dict[str, tuple[str, ...]] = {
    "lights_on": ("lights on", "turn on the lights", "turn the lights on", "switch on the lights"),
    "lights_off": ("lights off", "turn off the lights", "turn the lights off", "switch off the lights"),
    "volume_up": ("volume up", "louder", "turn it up"),
    "volume_down": ("volume down", "quieter", "turn it down"),
    "play": ("play", "play music", "resume"),
    "stop": ("stop", "pause"),
}


@dataclass
class Match:
    action: str
    phrase: str
    score: float
    start: int  # word positions in the normalised utterance
    end: int


def match_commands(text: str, commands: dict[str, tuple[str, ...]] = COMMANDS, threshold: float = 0.8,
                   word_min: float = 0.6) -> list[Match]:
    """Every command found in ``text``, in spoken order (non-overlapping; longer phrases first)."""
    words = normalize_english(text).split()
    candidates = []
    for action, phrases in commands.items():
        for phrase in phrases:
            target = phrase.split()
            n = len(target)
            for i in range(len(words) - n + 1):
                sims = [SequenceMatcher(None, a, b).ratio() for a, b in zip(target, words[i:i + n], strict=True)]
                score = sum(sims) / n
                if min(sims) >= word_min and score >= threshold:
                    candidates.append(Match(action, phrase, score, i, i + n))
    chosen: list[Match] = []
    for m in sorted(candidates, key=lambda m: (-(m.end - m.start), -m.score)):
        if all(m.end <= c.start or m.start >= c.end for c in chosen):
            chosen.append(m)
    return sorted(chosen, key=lambda m: m.start)


@dataclass
class Home:
    """The device being controlled (here it just keeps state and says what it did)."""

    lights: bool = False
    volume: int = 5
    playing: bool = False
    log: list[str] = field(default_factory=list)

    def do(self, action: str) -> str:
        if action == "lights_on":
            self.lights = True
        elif action == "lights_off":
            self.lights = False
        elif action == "volume_up":
            self.volume = min(10, self.volume + 1)
        elif action == "volume_down":
            self.volume = max(0, self.volume - 1)
        elif action == "play":
            self.playing = True
        elif action == "stop":
            self.playing = False
        self.log.append(action)
        return f"lights {'on' if self.lights else 'off'}, volume {self.volume}, " + (
            "playing" if self.playing else "stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle directory (torch-free runtime); default: PyTorch whisper-base")
    parser.add_argument("--profile", default="cpu", help="device profile: threads and budget (default cpu)")
    parser.add_argument("--budget", type=float, default=None, help="override the profile's budget")
    parser.add_argument("--language", default="en")
    parser.add_argument("--device", default=None, help="input device index or name")
    parser.add_argument("--input", default=None, help="replay this file instead of the microphone")
    parser.add_argument("--fast", action="store_true", help="with --input: as fast as possible")
    args = parser.parse_args(argv)

    try:
        from edgegate.export.profiles import get_profile

        profile = get_profile(args.profile)
        source = FileSource(args.input, realtime=not args.fast) if args.input else MicSource(args.device)
        transcriber = load_transcriber(bundle=args.bundle, threads=profile.threads)
        budget = args.budget if args.budget is not None else profile.budget
        if budget and not transcriber.supports_budget:
            print(f"note: {transcriber.describe()} has no gate predictor; running dense instead of budget "
                  f"{budget:g}", file=sys.stderr)
            budget = 0.0
        # Commands act on final lines only: no partial re-transcription, the CPU stays free.
        live = LiveTranscriber(transcriber, language=args.language, budget=budget, partials=False)
        live.warmup()
    except EdgegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    home = Home()
    print(f"profile {profile.name} (budget {budget:g}, {profile.threads} threads); say: "
          + ", ".join(p[0] for p in COMMANDS.values()), file=sys.stderr)
    try:
        for event in live.run(source):
            if isinstance(event, Notice):
                print(event.message, file=sys.stderr)
            if not isinstance(event, Final):
                continue
            found = match_commands(event.text)
            if not found:
                print(f'heard "{event.text}": no command', flush=True)
            for m in found:
                print(f'heard "{event.text}" -> {m.action} ({m.score:.2f}): {home.do(m.action)}', flush=True)
    except KeyboardInterrupt:
        pass
    print(f"{len(home.log)} commands: {' '.join(home.log) or '-'}", file=sys.stderr)
    return 1 if live.summary.error else 0


if __name__ == "__main__":
    sys.exit(main())
