"""A 2-hour file (a quiet tone with a few real speech clips) through `edgegate transcribe --vad`: peak RSS.

    python benchmarks/bench_longform_2h.py [--hours 2] [--out benchmarks/results/bench_longform_2h.json]

The file is generated block by block in a temp dir (never whole in memory, never committed).
Two child processes report their own peak RSS (getrusage(RUSAGE_SELF).ru_maxrss): the CLI loading
the model and transcribing a 3-s clip (the baseline), then the CLI on the 2-hour file. Bounded
memory means the second is the first plus a few MB, not plus the 460 MB that 2 h of float32
samples take (or the 2.3 GB of the 2-h log-mel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json_atomic  # noqa: E402

from edgegate.data.librivox import DEFAULT_DIR, load_clips  # noqa: E402

SR = 16000


def make_file(path: Path, hours: float, clips: list[tuple[Path, str]]) -> list[tuple[float, str]]:
    """Tone (220 Hz, amplitude 0.01) for ``hours``, with the clips at evenly spread offsets; returns (start, ref)."""
    total = int(hours * 3600 * SR)
    slots = np.linspace(0.08, 0.92, len(clips)) * total
    placed = [(int(s) // SR * SR, sf.read(str(p), dtype="float32")[0], ref) for s, (p, ref) in zip(slots, clips,
                                                                                                   strict=True)]
    block = 60 * SR
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16", format="WAV") as f:
        for a in range(0, total, block):
            n = min(block, total - a)
            t = np.arange(a, a + n) / SR
            x = (0.01 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
            for start, clip, _ in placed:
                lo, hi = max(a, start), min(a + n, start + len(clip))
                if lo < hi:
                    x[lo - a: hi - a] += clip[lo - start: hi - start]
            f.write(x)
    return [(start / SR, ref) for start, _, ref in placed]


CHILD = ("import resource, sys\nfrom edgegate.cli import main\nrc = main(sys.argv[1:])\n"
         "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")


def run_cli(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS MB of the child process itself, wall s, stdout) of one `edgegate transcribe` run."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "transcribe", *args], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"edgegate transcribe failed: {proc.stderr.strip()[-2000:]}")
    kb = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("peak_rss_kb"))
    return kb / 1024, wall, proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_longform_2h.json"))
    args = ap.parse_args()
    clips = [(wav, ref) for _, wav, ref in load_clips(DEFAULT_DIR)]
    if not clips:
        raise SystemExit("needs pocketsphinx-testdata (apt-get install pocketsphinx-testdata)")
    common = ["--language", "en", "--vad", "--format", "json", "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        short = Path(tmp) / "short.wav"
        sf.write(short, sf.read(str(clips[1][0]), dtype="float32")[0], SR)
        base_rss, base_wall, _ = run_cli([str(short), *common])  # the first child: its peak alone
        path = Path(tmp) / "two-hours.wav"
        t0 = time.perf_counter()
        placed = make_file(path, args.hours, clips)
        gen = time.perf_counter() - t0
        long_rss, wall, out = run_cli([str(path), *common])
        size = path.stat().st_size
    result = json.loads(out)
    found = []
    for start, ref in placed:
        hits = [s for s in result["segments"] if s["start"] < start + 10 and s["end"] > start - 1]
        found.append({"clip_start": start, "reference": ref, "segments": [(s["start"], s["end"], s["text"])
                                                                         for s in hits]})
    report = {
        "command": "python benchmarks/bench_longform_2h.py " + " ".join(sys.argv[1:]),
        "hours": args.hours, "file_bytes": size, "generate_s": round(gen, 1),
        "baseline_peak_rss_mb": round(base_rss, 1), "baseline_wall_s": round(base_wall, 1),
        "peak_rss_mb": round(long_rss, 1), "wall_s": round(wall, 1),
        "samples_float32_mb": round(args.hours * 3600 * SR * 4 / 2**20, 1),
        "duration": result["duration"], "duration_after_vad": result["duration_after_vad"],
        "windows": result["windows"], "decoder_steps": result["decoder_steps"],
        "vad_detector": result["options"].get("vad_detector"), "speech_chunks": len(result["speech_chunks"]),
        "timings": result["timings"], "clips": found,
    }
    write_json_atomic(args.out, report)
    print(json.dumps({k: v for k, v in report.items() if k != "clips"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
