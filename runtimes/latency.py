"""The latency table of a bundle on this device: what ``edgegate profile`` measures and writes as ``costs.ms``.

FLOPs are a poor proxy for time where small matrix-vector products are memory-bound: on a CPU a
decoding step runs at a few GFLOP/s while the encoder runs at ~100, so a budget planned in FLOPs
saves much less time than it promises. A budget with ``cost_unit="ms"`` plans with this table
instead (:meth:`edgegate.runtimes.session.Session.costs`). (A *profile* in edgegate is a device
profile; this is the bundle's *latency table*.)

What is timed, per gate, is the work skipping that gate removes from one utterance:

- encoder modules: one run at ``n_frames`` encoder positions;
- decoder self-attention / cross-attention / MLP: the median step times ``n_tokens`` steps, with
  a KV cache of ``n_tokens // 2`` past positions; cross-attention adds its once-per-utterance K/V
  projection (``decoder.<i>.cross_kv``, which runs only when that gate is kept);
- a gate with a skip adapter is charged its module's time minus the adapter's, since the adapter
  runs in its place.

Modules run in execution order, a whole encoder pass or decoder step at a time, so each module
finds the caches as real decoding leaves them (its weights evicted by the other modules'), not
warm from a repeat of itself. The always-on parts (stem, final norm, embedding, logits) are timed
the same way and kept apart. The modules run from the bundle's own runner list
(:func:`edgegate.runtimes.execution.runner_list`), so any model family's bundle is measured the
same way. Torch-free: numpy and the session's backend only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegate.cost_model import CostTerms, evaluate
from edgegate.errors import EdgegateError
from edgegate.files import write_text_atomic
from edgegate.runtimes.execution import Runner, RunnerList
from edgegate.runtimes.schema import STAGES

if TYPE_CHECKING:
    from edgegate.runtimes.bundle import Bundle
    from edgegate.runtimes.session import Session

# Decoder steps timed per repeat: the cache length is fixed, so more steps only add samples.
MAX_STEPS_PER_REPEAT = 16


@dataclass
class LatencyTable:
    """Milliseconds per utterance at ``meta["frames"]`` encoder positions and ``meta["tokens"]`` steps."""

    gates: dict[str, float]  # gate name -> ms its skipping removes
    always_on: dict[str, float]  # always-on module name -> ms
    per_step: dict[str, float]  # the per-decoding-step part of the above (the rest runs once per utterance)
    meta: dict[str, Any]

    def to_costs(self) -> dict[str, Any]:
        """The keys this table adds to a manifest's ``costs``."""
        def r(d: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 4) for k, v in d.items()}  # 0.1 us: far below timing noise

        return {"ms": r(self.gates), "ms_always_on": r(self.always_on), "ms_per_step": r(self.per_step),
                "ms_meta": dict(self.meta)}


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu or platform.machine(), "cpus": os.cpu_count()}


def _check_int(value: Any, what: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise EdgegateError(f"{what} must be {bound}: got {value!r}")
    return int(value)


class _Timer:
    """Runs runners over an environment and keeps the time of every graph call (when recording)."""

    def __init__(self, adapters: Mapping[str, Any]):
        self.adapters = adapters
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.record = False

    def run(self, r: Runner, env: dict[str, np.ndarray]) -> None:
        feed = r.feed(env)
        t0 = time.perf_counter()
        outs = r.module.run(feed)
        if self.record:
            self.samples[r.name].append(time.perf_counter() - t0)
        spec = r.spec
        if spec is not None and spec.adapter_graph is not None and spec.gate in self.adapters:
            a = spec.adapter_graph  # what replaces the module when skipped, on the module's own input
            t0 = time.perf_counter()
            self.adapters[spec.gate].run({t.name: env[t.value] for t in a.inputs})
            if self.record:
                self.samples[a.name].append(time.perf_counter() - t0)
        for t, array in zip(r.outputs, outs, strict=True):
            env[t.value] = array


def _random_inputs(session: Session, runners: RunnerList, n_frames: int, past: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """A random mel of ``n_frames`` encoder positions, caches of ``past`` positions, one token."""
    limits = session.limits
    sizes = {"batch": 1, "kv_batch": 1, "tokens": 1, "past": past, "frames": n_frames,
             "mel_frames": limits.mel_frames_per_position * n_frames}

    def normal(*shape: int) -> np.ndarray:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    # Shaped as the graph that reads it declares (Whisper: (1, n_mels, frames); OWSM: (1, 3001, n_mels)).
    spec = next(t for r in runners.per_window for t in r.inputs if t.value == "mel")
    mel = normal(*[a if isinstance(a, int) else sizes[a] for a in spec.shape])
    state = {s.value: normal(*[a if isinstance(a, int) else sizes[a] for a in s.spec.shape]) for s in runners.state}
    token = np.array([[int(rng.integers(0, limits.n_vocab))]], dtype=np.int64)
    return mel, state, token


def measure_latency(session: Session, n_frames: int = 1500, n_tokens: int = 32, repeats: int = 5,
                    progress: bool = True) -> LatencyTable:
    """Time every module of ``session``'s bundle; the medians of ``repeats`` passes after one warm-up.

    ``n_frames``: encoder positions (1500 = a full 30-s window); ``n_tokens``: decoder steps per
    utterance. Returns ms per gate (:attr:`LatencyTable.gates`, what :meth:`Session.costs` plans
    with) and per always-on module, separately.
    """
    limits = session.limits
    n_frames = _check_int(n_frames, "frames (encoder positions)", 1, limits.encoder_positions)
    n_tokens = _check_int(n_tokens, "tokens (decoder steps)", 1, limits.text_positions)
    repeats = _check_int(repeats, "repeats", 1)
    runners = session.runner_list(np.ones(len(session.gate_names), dtype=bool))
    fixed = not any(isinstance(a, str) and a != "batch" for r in runners.per_window for t in r.inputs
                    if t.value == "mel" for a in t.shape)
    if fixed and n_frames != limits.encoder_positions:  # OWSM: every window is a full one
        raise EdgegateError(f"this bundle's encoder always runs a full window of {limits.encoder_positions} "
                            f"positions; profile with --frames {limits.encoder_positions} (or leave it out)")
    past = n_tokens // 2
    mel, state, token = _random_inputs(session, runners, n_frames, past, np.random.default_rng(0))
    timer = _Timer(session.adapters)
    steps = min(n_tokens, MAX_STEPS_PER_REPEAT)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(repeats + 1) * (1 + steps), desc="profile", unit="pass", file=sys.stderr,
                   dynamic_ncols=True, leave=False)
    try:
        for r in range(repeats + 1):
            timer.record = r > 0  # the first pass warms up: allocations, page-ins, kernel selection
            window = {"mel": mel}
            for runner in runners.per_window:
                timer.run(runner, window)
            if bar:
                bar.update(1)
            for _ in range(steps):
                env = {**window, **state, "tokens": token, "positions": np.array([past], dtype=np.int64)}
                for runner in runners.per_step:
                    timer.run(runner, env)
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    ms = {name: 1e3 * float(np.median(s)) for name, s in timer.samples.items()}
    return _table(session, ms, n_frames, n_tokens, past, repeats, steps)


def _table(session: Session, ms: dict[str, float], n_frames: int, n_tokens: int, past: int, repeats: int,
           steps: int) -> LatencyTable:
    """Per gate: what skipping it removes from one utterance (decoder modules: per step x tokens)."""
    adapters = session.adapters
    gates = {g: 0.0 for g in session.gate_names}
    always: dict[str, float] = {}
    per_step: dict[str, float] = {}
    for spec in session.bundle.modules:
        t = ms[spec.name]
        if spec.adapter_graph is not None and spec.gate in adapters:
            # What skipping saves is the module minus the adapter that replaces it (never below 0).
            t = max(t - ms[spec.adapter_graph.name], 0.0)
        if STAGES[spec.stage] == "per_step":
            per_step[spec.gate or spec.name] = t
            t *= n_tokens
        if spec.gate is None:  # always on, or a merge of several gates (saved only when all are skipped)
            always[spec.name] = t
        else:
            gates[spec.gate] += t
    backend = session.backend
    meta = {
        "frames": n_frames, "tokens": n_tokens, "kv_cache_past": past, "repeats": repeats,
        "steps_per_repeat": steps, "statistic": "median",
        "backend": backend.name, "backend_detail": backend.describe(), "threads": getattr(backend, "threads", None),
        "machine": _machine(), "date_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "adapter_ms": {s.gate: round(ms[s.adapter_graph.name], 4) for s in session.bundle.modules
                       if s.adapter_graph is not None and s.gate in adapters},
        "note": "ms per utterance that skipping each gate removes (decoder: per step x tokens, cross-attention "
                "+ its K/V projection; adapter gates net of the adapter); written by edgegate profile",
    }
    return LatencyTable(gates, always, per_step, meta)


def _ratio(num: float | None, den: float | None) -> float:
    return num / den if num is not None and den else 1.0


def measured_ms(costs: Mapping[str, Any], terms: Mapping[str, CostTerms], n_frames: int, n_tokens: int,
                always_on: bool = False) -> dict[str, float]:
    """The manifest's measured ms (``costs.ms``, or ``costs.ms_always_on``) at another utterance shape.

    The table holds one shape (``ms_meta`` frames and tokens). An utterance with fewer encoder
    positions (a trimmed ``audio_ctx``) or more tokens shifts the encoder/decoder balance a lot,
    so each measured part is scaled by the FLOP ratio of that part: the once-per-utterance part
    (encoder module, cross-attention K/V) by its FLOPs at ``n_frames``, the per-step part by the
    per-token FLOPs times ``n_tokens``. The module's measured speed is kept, which is what FLOPs
    alone get wrong. A table without ``ms_per_step`` and ``ms_meta`` shapes is returned as is.
    """
    table = costs["ms_always_on" if always_on else "ms"]
    meta = costs.get("ms_meta") or {}
    per_step = costs.get("ms_per_step") or {}
    f0, t0 = meta.get("frames"), meta.get("tokens")
    if not per_step or not f0 or not t0:
        return {k: float(v) for k, v in table.items()}
    n_tokens = max(int(n_tokens), 1)
    at0, once0 = evaluate(terms, f0, t0), evaluate(terms, f0, 0)
    at, once = evaluate(terms, n_frames, n_tokens), evaluate(terms, n_frames, 0)
    out = {}
    for k, v in table.items():
        step = float(per_step.get(k, 0.0))
        # Not clamped here: rounding in the stored table leaves a per-step-only module a fixed part of
        # about +-1e-4 ms, and keeping it makes the profiled shape return the table exactly.
        fixed = (float(v) - step * t0) * _ratio(once.get(k), once0.get(k))
        if k in at and k in at0:
            step *= _ratio((at[k] - once[k]) / n_tokens, (at0[k] - once0[k]) / t0)
        out[k] = max(fixed + step * n_tokens, 0.0)
    return out


def measured_gate_ms(bundle: Bundle, gate_names: list[str], n_frames: int, n_tokens: int) -> np.ndarray:
    """Per-gate measured ms in ``gate_names`` order at this utterance shape (``measured_ms``), or a one-line
    error naming the missing ``edgegate profile`` run."""
    from edgegate.budget import BudgetError

    costs = bundle.manifest["costs"]
    table = costs.get("ms")
    if not table:
        raise BudgetError(f"this budget counts milliseconds but bundle {bundle.path} has no measured "
                          f"cost table; run: edgegate profile {bundle.path} (on the target device), "
                          "or use cost_unit flops")
    missing = [n for n in gate_names if n not in table]
    if missing:
        raise BudgetError(f"the measured cost table of bundle {bundle.path} lacks {', '.join(missing)}; "
                          f"re-run: edgegate profile {bundle.path}")
    ms = measured_ms(costs, bundle.gate_terms, n_frames, n_tokens)
    return np.array([ms[n] for n in gate_names], dtype=np.float64)


def write_latency_table(bundle_dir: str | Path, table: LatencyTable) -> Path:
    """Add ``table`` to the bundle's manifest ``costs``, atomically (temp file, then a rename).

    Only manifest.json changes; it is not among the hashed files, so every file hash stays valid.
    """
    from edgegate.runtimes.bundle import MANIFEST, read_manifest

    path = Path(bundle_dir)
    manifest = read_manifest(path)  # re-read: keep whatever else is on disk now
    manifest["costs"].update(table.to_costs())
    target = path / MANIFEST
    return write_text_atomic(target, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                             target.stat().st_mode & 0o777)


def format_latency_table(profile: LatencyTable, terms: Mapping[str, CostTerms],
                         order: Iterable[str] | None = None) -> str:
    """Module, ms, share of the utterance's total ms, GFLOPs and achieved GFLOP/s, gates then always-on.

    ``terms``: the bundle's cost terms of gates and always-on modules (FLOPs at the measured shape)."""
    f, t = profile.meta["frames"], profile.meta["tokens"]
    flops = evaluate(terms, f, t)
    total = sum(profile.gates.values()) + sum(profile.always_on.values())
    rows = [("module", "ms", "share", "GFLOPs", "GFLOP/s")]

    def row(name: str, ms: float, label: str | None = None) -> tuple[str, ...]:
        gf = flops.get(name, float("nan")) / 1e9
        rate = f"{gf / (ms / 1e3):.1f}" if ms > 0 else "-"
        return (label or name, f"{ms:.3f}", f"{100 * ms / total:.1f}%" if total else "-", f"{gf:.3f}", rate)

    for name in order or profile.gates:
        rows.append(row(name, profile.gates[name]))
    for name, ms in profile.always_on.items():
        rows.append(row(name, ms, f"{name} (always on)"))
    gated = sum(profile.gates.values())
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(f"gateable {gated:.1f} ms + always-on {total - gated:.1f} ms per utterance "
                 f"({f} encoder positions, {t} tokens); gates can remove {100 * gated / total:.1f}% of it"
                 if total else "nothing measured")
    return "\n".join(lines)
