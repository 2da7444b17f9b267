"""WER and speed of edgegate vs faster-whisper on the 5 LibriVox clips of Debian's pocketsphinx-testdata.

Both systems run the same Whisper base weights (edgegate's ``whisper-base`` CTranslate2 directory) with
greedy decoding, temperature 0 only, language en, no timestamps, no VAD, no previous-text conditioning,
on the same float32 16-kHz samples (loaded once with ``edgegate.audio.load_audio``). WER is corpus-level
on Whisper-style normalised text (``edgegate.textnorm``). Timing: after one untimed warm-up clip per
system, every clip is transcribed ``--repeats`` times by each system in turn (interleaved, so that load
from other processes hits all systems alike) and the per-clip median kept; total = sum of those medians,
RTF = total / audio seconds (lower is faster). Model loading is reported apart (load_seconds).

Exit status: 0 when edgegate's WER is no worse than faster-whisper int8's, 1 when it is worse,
2 when the clips or a model cannot be found.

    python benchmarks/bench_librivox_wer.py            # edgegate vs faster-whisper int8
    python benchmarks/bench_librivox_wer.py --all      # also faster-whisper float32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import FASTER_WHISPER_DECODING, faster_whisper_transcriber, write_json_atomic

from edgegate.data.librivox import find_librivox_dir, load_clips

RESULTS = Path(__file__).resolve().parent / "results" / "librivox_wer.json"


def time_systems(runs: dict[str, Callable], audios: list, repeats: int) -> dict[str, dict]:
    """Per-clip median seconds of ``repeats`` runs, the systems interleaved so that load from other
    processes hits them alike; each system first transcribes the first clip once, untimed (warm-up)."""
    for run in runs.values():
        run(audios[0])
    times: dict[str, list[list[float]]] = {name: [[] for _ in audios] for name in runs}
    hyps: dict[str, list[str]] = {name: [""] * len(audios) for name in runs}
    for rep in range(repeats):
        for i, audio in enumerate(audios):
            for name, run in runs.items():
                t0 = time.perf_counter()
                text = run(audio)
                times[name][i].append(time.perf_counter() - t0)
                if rep == 0:
                    hyps[name][i] = text
                elif text != hyps[name][i]:
                    print(f"  warning: {name} gave a different text on repeat {rep + 1} of clip {i}",
                          file=sys.stderr)
        print(f"  repeat {rep + 1}/{repeats} done", file=sys.stderr)
    return {name: {"hypotheses": hyps[name], "clip_seconds": [statistics.median(t) for t in times[name]],
                   "clip_runs": times[name]} for name in runs}


def word_diff(ref: str, hyp: str) -> list[str]:
    """Substitutions / deletions / insertions between two normalised strings, as short strings."""
    import jiwer

    out = jiwer.process_words(ref, hyp) if ref else None
    if out is None:
        return [f"+{w}" for w in hyp.split()]
    r, h = ref.split(), hyp.split()
    diffs = []
    for chunk in out.alignments[0]:
        if chunk.type == "substitute":
            diffs.append(f"{' '.join(r[chunk.ref_start_idx:chunk.ref_end_idx])} -> "
                         f"{' '.join(h[chunk.hyp_start_idx:chunk.hyp_end_idx])}")
        elif chunk.type == "delete":
            diffs.append(f"-{' '.join(r[chunk.ref_start_idx:chunk.ref_end_idx])}")
        elif chunk.type == "insert":
            diffs.append(f"+{' '.join(h[chunk.hyp_start_idx:chunk.hyp_end_idx])}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--all", action="store_true", help="also run faster-whisper float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per clip per system (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every system (default 2)")
    parser.add_argument("--model", default="whisper-base", help="edgegate model name (default whisper-base)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with the wavs and 'transcription' (default: via dpkg -L)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    folder = args.data or find_librivox_dir()
    if folder is None or not (folder / "transcription").exists():
        print("error: LibriVox clips not found; apt-get install pocketsphinx-testdata or pass --data DIR",
              file=sys.stderr)
        return 2
    clips = load_clips(folder)
    if not clips:
        print(f"error: no clips listed in {folder / 'transcription'} have a wav next to it", file=sys.stderr)
        return 2

    import ctranslate2
    import faster_whisper
    import torch

    from edgegate.audio import load_audio
    from edgegate.models.registry import resolve_model
    from edgegate.textnorm import normalize_english, wer
    from edgegate.transcriber import WhisperModel

    audios = [load_audio(wav) for _, wav, _ in clips]
    refs = [ref for _, _, ref in clips]
    audio_seconds = sum(len(a) for a in audios) / 16000
    model_dir = resolve_model(args.model)
    print(f"{len(clips)} clips, {audio_seconds:.2f} s of audio, weights {model_dir}, {args.threads} threads, "
          f"median of {args.repeats}", file=sys.stderr)

    systems: list[tuple[str, Callable[[], Callable]]] = []

    def make_edgegate() -> Callable:
        model = WhisperModel(args.model, threads=args.threads)
        return lambda audio: model.transcribe_windows(audio, language="en", task="transcribe", beam_size=1).text

    def make_fw(compute_type: str) -> Callable[[], Callable]:
        def make() -> Callable:
            run = faster_whisper_transcriber(args.model, compute_type, args.threads)
            return lambda audio: run(audio)[0]

        return make

    systems.append(("edgegate (torch fp32)", make_edgegate))
    systems.append(("faster-whisper int8", make_fw("int8")))
    if args.all:
        systems.append(("faster-whisper float32", make_fw("float32")))

    runs: dict[str, Callable] = {}
    load_seconds: dict[str, float] = {}
    for name, make in systems:
        t0 = time.perf_counter()
        runs[name] = make()
        load_seconds[name] = time.perf_counter() - t0
    timed = time_systems(runs, audios, args.repeats)
    results = []
    for name, _ in systems:
        r = timed[name]
        total = sum(r["clip_seconds"])
        results.append({
            "system": name,
            "wer": wer(refs, r["hypotheses"], language="en"),
            "total_seconds": total,
            "rtf": total / audio_seconds,
            "load_seconds": load_seconds[name],
            **r,
        })

    print()
    print(f"{'system':<24} {'WER %':>7} {'seconds':>8} {'RTF':>7}")
    for r in results:
        print(f"{r['system']:<24} {100 * r['wer']:7.2f} {r['total_seconds']:8.2f} {r['rtf']:7.3f}")
    print()
    for i, (utt, _, ref) in enumerate(clips):
        print(f"[{utt}]")
        print(f"  {'reference':<24} {ref}")
        nref = normalize_english(ref)
        for r in results:
            hyp = r["hypotheses"][i]
            diffs = word_diff(nref, normalize_english(hyp))
            note = f"   <{'; '.join(diffs)}>" if diffs else ""
            print(f"  {r['system']:<24} {hyp}{note}")

    edge, fw = results[0], results[1]
    ok = edge["wer"] <= fw["wer"] + 1e-12
    data = {
        "benchmark": "librivox_wer",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": str(folder),
        "clips": [{"id": u, "reference": ref, "audio_seconds": len(a) / 16000}
                  for (u, _, ref), a in zip(clips, audios, strict=True)],
        "audio_seconds": audio_seconds,
        "model": args.model,
        "model_dir": str(model_dir),
        "threads": args.threads,
        "repeats": args.repeats,
        "timing": ("per clip median of repeats (systems interleaved) after one warm-up clip; "
                   "total = sum of medians; rtf = total/audio"),
        "decoding": {**FASTER_WHISPER_DECODING, "temperature": 0.0},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "systems": results,
        "criterion": "edgegate WER <= faster-whisper int8 WER",
        "passed": ok,
    }
    write_json_atomic(args.output, data)
    print(f"\nwrote {args.output}")
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}: edgegate WER {100 * edge['wer']:.2f}% vs faster-whisper int8 {100 * fw['wer']:.2f}%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
