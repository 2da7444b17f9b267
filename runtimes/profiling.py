"""Measured per-module cost of a bundle on this device: the table ``edgegate profile`` writes as ``costs.ms``.

FLOPs are a poor proxy for time where small matrix-vector products are memory-bound: on a CPU a
decoding step runs at a few GFLOP/s while the encoder runs at ~100, so a budget planned in FLOPs
saves much less time than it promises. A budget with ``cost_unit="ms"`` plans with this table
instead (:meth:`edgegate.runtimes.session.Session.costs`).

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
the same way and kept apart. Torch-free: numpy and the session's backend only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegate.errors import BundleError, EdgegateError
from edgegate.models.costs import always_on_costs, module_costs

if TYPE_CHECKING:
    from edgegate.runtimes.session import Session

# Decoder steps timed per repeat: the cache length is fixed, so more steps only add samples.
MAX_STEPS_PER_REPEAT = 16


@dataclass
class BundleProfile:
    """Milliseconds per utterance at ``meta["frames"]`` encoder positions and ``meta["tokens"]`` steps."""

    gates: dict[str, float]  # gate name -> ms its skipping removes
    always_on: dict[str, float]  # always-on module name -> ms
    per_step: dict[str, float]  # the per-decoding-step part of the above (the rest runs once per utterance)
    meta: dict[str, Any]

    def to_costs(self) -> dict[str, Any]:
        """The keys this profile adds to a manifest's ``costs``."""
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


def profile_bundle(session: Session, n_frames: int = 1500, n_tokens: int = 32, repeats: int = 5,
                   progress: bool = True) -> BundleProfile:
    """Time every module of ``session``'s bundle; the medians of ``repeats`` passes after one warm-up.

    ``n_frames``: encoder positions (1500 = a full 30-s window); ``n_tokens``: decoder steps per
    utterance. Returns ms per gate (:attr:`BundleProfile.gates`, what :meth:`Session.costs` plans
    with) and per always-on module, separately.
    """
    dims = session.dims
    n_frames = _check_int(n_frames, "frames (encoder positions)", 1, int(dims["n_audio_ctx"]))
    n_tokens = _check_int(n_tokens, "tokens (decoder steps)", 1, int(dims["n_text_ctx"]))
    repeats = _check_int(repeats, "repeats", 1)
    mods, adapters = session.modules, session.adapters
    names = {m.name for m in session.bundle.modules}
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> np.ndarray:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    n_audio, n_text = dims["n_audio_layer"], dims["n_text_layer"]
    heads, head_dim = dims["n_text_head"], dims["n_text_state"] // dims["n_text_head"]
    past = n_tokens // 2
    mel = normal(1, dims["n_mels"], 2 * n_frames)
    caches = [(normal(1, heads, past, head_dim), normal(1, heads, past, head_dim)) for _ in range(n_text)]
    token = np.array([[int(rng.integers(0, dims["n_vocab"]))]], dtype=np.int64)
    position = np.array([past], dtype=np.int64)
    samples: dict[str, list[float]] = defaultdict(list)
    record = True

    def run(name: str, feed: dict[str, np.ndarray], module: Any = None) -> list[np.ndarray]:
        m = module if module is not None else mods[name]
        t0 = time.perf_counter()
        out = m.run(feed)
        if record:
            samples[name].append(time.perf_counter() - t0)
        return out

    def residual(gate: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = run(gate, feed)
        if gate in adapters:
            run(f"{gate}.adapter", {"x": feed["x"]}, adapters[gate])
        return out

    def encoder_pass() -> list[tuple[np.ndarray, np.ndarray]]:
        x = run("encoder.stem", {"mel": mel})[0]
        for i in range(n_audio):
            for kind in ("attn", "mlp"):
                x = residual(f"encoder.{i}.{kind}", {"x": x})[0]
        xa = run("encoder.ln_post", {"x": x})[0]
        return [tuple(run(f"decoder.{i}.cross_kv", {"xa": xa})) for i in range(n_text)]

    def decoder_step(cross: list[tuple[np.ndarray, np.ndarray]]) -> None:
        x = run("decoder.embed", {"tokens": token, "positions": position})[0]
        for i in range(n_text):
            k, v = caches[i]
            x = residual(f"decoder.{i}.self_attn", {"x": x, "k_cache": k, "v_cache": v})[0]
            x = residual(f"decoder.{i}.cross_attn", {"x": x, "k": cross[i][0], "v": cross[i][1]})[0]
            x = residual(f"decoder.{i}.mlp", {"x": x})[0]
        run("decoder.logits", {"x": x})

    steps = min(n_tokens, MAX_STEPS_PER_REPEAT)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(repeats + 1) * (1 + steps), desc="profile", unit="pass", file=sys.stderr,
                   dynamic_ncols=True, leave=False)
    try:
        for r in range(repeats + 1):
            record = r > 0  # the first pass warms up: allocations, page-ins, kernel selection
            cross = encoder_pass()
            if bar:
                bar.update(1)
            for _ in range(steps):
                decoder_step(cross)
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()

    unknown = sorted(names - samples.keys())
    if unknown:
        raise BundleError(f"{session.bundle.path}: edgegate profile does not know how to run module(s) "
                          f"{', '.join(unknown)}; profile with the edgegate that exported the bundle")
    ms = {name: 1e3 * float(np.median(s)) for name, s in samples.items()}

    gates = {g: 0.0 for g in session.gate_names}
    always: dict[str, float] = {}
    per_step: dict[str, float] = {}
    for spec in session.bundle.modules:
        t = ms[spec.name]
        if spec.gate is not None and spec.gate in adapters and spec.stage != "cross_kv":
            # What skipping saves is the module minus the adapter that replaces it (never below 0).
            t = max(t - ms[f"{spec.gate}.adapter"], 0.0)
        if spec.stage == "decoder_step":
            per_step[spec.gate or spec.name] = t
            t *= n_tokens
        if spec.gate is None:
            always[spec.name] = t
        else:
            gates[spec.gate] += t
    backend = session.backend
    meta = {
        "frames": n_frames, "tokens": n_tokens, "kv_cache_past": past, "repeats": repeats,
        "steps_per_repeat": steps, "statistic": "median",
        "backend": backend.name, "backend_detail": backend.describe(), "threads": getattr(backend, "threads", None),
        "machine": _machine(), "date_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "adapter_ms": {g: round(ms[f"{g}.adapter"], 4) for g in session.gate_names if g in adapters},
        "note": "ms per utterance that skipping each gate removes (decoder: per step x tokens, cross-attention "
                "+ its K/V projection; adapter gates net of the adapter); written by edgegate profile",
    }
    return BundleProfile(gates, always, per_step, meta)


def _flops(table: Mapping[str, Any]) -> dict[str, float]:
    return {k: c.flops for k, c in table.items()}


def _ratio(num: float | None, den: float | None) -> float:
    return num / den if num is not None and den else 1.0


def measured_ms(costs: Mapping[str, Any], dims: Any, n_frames: int, n_tokens: int,
                always_on: bool = False) -> dict[str, float]:
    """The manifest's measured ms (``costs.ms``, or ``costs.ms_always_on``) at another utterance shape.

    The profile holds one shape (``ms_meta`` frames and tokens). An utterance with fewer encoder
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
    fn = always_on_costs if always_on else module_costs
    at0, once0 = _flops(fn(dims, f0, t0)), _flops(fn(dims, f0, 0))
    at, once = _flops(fn(dims, n_frames, n_tokens)), _flops(fn(dims, n_frames, 0))
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


def write_profile(bundle_dir: str | Path, profile: BundleProfile) -> Path:
    """Add ``profile`` to the bundle's manifest ``costs``, atomically (temp file, then a rename).

    Only manifest.json changes; it is not among the hashed files, so every file hash stays valid.
    """
    from edgegate.runtimes.bundle import MANIFEST, read_manifest

    path = Path(bundle_dir)
    manifest = read_manifest(path)  # re-read: keep whatever else is on disk now
    manifest["costs"].update(profile.to_costs())
    target = path / MANIFEST
    mode = target.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def format_table(profile: BundleProfile, dims: Any, order: Iterable[str] | None = None) -> str:
    """Module, ms, share of the utterance's total ms, GFLOPs and achieved GFLOP/s, gates then always-on."""
    f, t = profile.meta["frames"], profile.meta["tokens"]
    flops = {**_flops(module_costs(dims, f, t)), **_flops(always_on_costs(dims, f, t))}
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
