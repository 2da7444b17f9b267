"""The runner list: (bundle, keep mask) -> the graphs that run, in order, over named values.

:func:`runner_list` is the one place that decides what executes for a plan: per module of the
manifest, in stage order, the module itself when one of its gates is kept (or it has none), its
skip adapter in its place when skipped, zeros for a skipped branch, or nothing for a skipped
residual step. Each runner reads its inputs from an environment of named values and writes its
outputs back (see :mod:`edgegate.runtimes.schema`), so nothing here knows a model family's
module names. ``Session``, ``edgegate profile`` and the backends' ``prepare`` work from the same
specs. The list is checked when it is built: every value a runner reads must be fed or written
before it, so a manifest that does not add up is one :class:`BundleError` at load, not a
``KeyError`` mid-decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgegate.errors import BundleError
from edgegate.runtimes.backends.base import Module
from edgegate.runtimes.schema import FEEDS, LOGITS, STAGES, ModuleSpec, TensorSpec


@dataclass(frozen=True)
class Runner:
    """One graph bound to values: ``env[out.value] = graph(**{inp.name: env[inp.value]})``."""

    name: str
    module: Module | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    spec: ModuleSpec | None = None
    zeros: bool = False  # write zeros of the outputs' shapes instead of running (a skipped branch)

    def feed(self, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {t.name: env[t.value] for t in self.inputs}

    def __call__(self, env: dict[str, np.ndarray]) -> None:
        if self.zeros:
            sizes = {a: env[t.value].shape[i] for t in self.inputs for i, a in enumerate(t.shape) if isinstance(a, str)}
            for t in self.outputs:
                env[t.value] = np.zeros([a if isinstance(a, int) else sizes[a] for a in t.shape], dtype=t.dtype)
            return
        outs = self.module.run(self.feed(env))
        for t, array in zip(self.outputs, outs, strict=True):
            env[t.value] = array


@dataclass(frozen=True)
class StateInit:
    """A value kept across decoder steps: starts empty, shaped like the input that first reads it."""

    value: str
    spec: TensorSpec

    def empty(self, batch: int) -> np.ndarray:
        shape = [a if isinstance(a, int) else (batch if a == "batch" else 0) for a in self.spec.shape]
        return np.zeros(shape, dtype=self.spec.dtype)


@dataclass(frozen=True)
class RunnerList:
    per_window: tuple[Runner, ...]  # stem, kept encoder modules, final norm, kept cross-K/V producers
    per_step: tuple[Runner, ...]  # embedding, kept decoder modules with their caches, logits
    state: tuple[StateInit, ...]  # caches the step reads and grows
    window_values: tuple[str, ...]  # what the step reads of a window's values


def _runner(spec: ModuleSpec, keep: Mapping[str, bool], modules: Mapping[str, Module],
            adapters: Mapping[str, Module]) -> Runner | None:
    """What runs for one module under ``keep``: itself, its adapter, zeros, or nothing."""
    if not spec.gates or any(keep[g] for g in spec.gates):
        return Runner(spec.name, modules[spec.name], spec.inputs, spec.outputs, spec)
    if spec.adapter_graph is not None and spec.gate in adapters:
        a = spec.adapter_graph
        return Runner(a.name, adapters[spec.gate], a.inputs, a.outputs, spec)
    if spec.skip == "identity":
        return None
    known = {a for t in spec.inputs for a in t.shape if isinstance(a, str)}
    missing = {a for t in spec.outputs for a in t.shape if isinstance(a, str)} - known
    if missing:
        raise BundleError(f"module {spec.name}: skipped to zeros, but its inputs do not give the size of "
                          f"{', '.join(sorted(missing))}; re-export the bundle")
    return Runner(f"{spec.name}.zeros", None, spec.inputs, spec.outputs, spec, zeros=True)


def _unbound(r: Runner, value: str, phase: str) -> BundleError:
    return BundleError(f"module {r.name} reads {value!r}, which nothing before it in the {phase} writes "
                       "under this mask; re-export the bundle")


def runner_list(specs: Sequence[ModuleSpec], gate_names: Sequence[str], mask: np.ndarray,
                modules: Mapping[str, Module], adapters: Mapping[str, Module], state: Sequence[str]) -> RunnerList:
    """The runners of one keep mask (one bool per gate, in ``gate_names`` order), per window and per step.

    ``modules`` maps module names to loaded graphs, ``adapters`` gate names to loaded skip adapters,
    ``state`` names the values that persist across decoder steps.
    """
    keep = dict(zip(gate_names, (bool(k) for k in mask), strict=True))
    phases: dict[str, list[Runner]] = {"per_window": [], "per_step": []}
    for stage, runs in STAGES.items():
        for spec in specs:
            r = _runner(spec, keep, modules, adapters) if spec.stage == stage else None
            if r is not None:
                phases[runs].append(r)
    window = set(FEEDS["per_window"])
    for r in phases["per_window"]:
        for t in r.inputs:
            if t.value not in window:
                raise _unbound(r, t.value, "encoder")
        window.update(t.value for t in r.outputs)
    inits: dict[str, StateInit] = {}
    for r in phases["per_step"]:
        for t in r.inputs:
            if t.value in state and t.value not in inits:
                inits[t.value] = StateInit(t.value, t)
    available = set(FEEDS["per_step"]) | set(inits)
    from_window: list[str] = []
    for r in phases["per_step"]:
        for t in r.inputs:
            if t.value not in available:
                if t.value not in window:
                    raise _unbound(r, t.value, "decoder step")
                from_window.append(t.value)
                available.add(t.value)
        available.update(t.value for t in r.outputs)
    if LOGITS not in available:
        raise BundleError(f"no decoder-step module writes {LOGITS!r}; re-export the bundle")
    return RunnerList(tuple(phases["per_window"]), tuple(phases["per_step"]), tuple(inits.values()),
                      tuple(from_window))


class _Unloaded(dict):
    """Stands for every graph and adapter when only the dataflow of a manifest is checked."""

    def __missing__(self, key: str) -> None:
        return None

    def __contains__(self, key: object) -> bool:
        return True


def check_dataflow(specs: Sequence[ModuleSpec], gate_names: Sequence[str], state: Sequence[str]) -> None:
    """The dense runner list must add up (every value read is fed or written before): BundleError if not."""
    runner_list(specs, gate_names, np.ones(len(gate_names), dtype=bool), _Unloaded(), _Unloaded(), state)


class GraphDecoderState:
    """Decoder state for one window over a runner list (an ``edgegate.decoding.DecoderState``)."""

    def __init__(self, runners: RunnerList, window: Mapping[str, np.ndarray], max_positions: int):
        self.runners = runners
        self.window = dict(window)
        self.max_positions = max_positions
        self.state: dict[str, np.ndarray] | None = None
        self.offset = 0
        self.steps = 0

    def step(self, tokens: np.ndarray) -> np.ndarray:
        return self.step_values(tokens)[LOGITS]

    def step_values(self, tokens: np.ndarray, before: Callable[[Runner, dict[str, np.ndarray]], None] | None = None
                    ) -> dict[str, np.ndarray]:
        """One step; every value it saw. ``before(runner, env)`` is called before each runner (the
        word-timestamp pass reads the residual stream there), so the plain step pays nothing for it."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        b, t = tokens.shape
        if self.offset + t > self.max_positions:
            raise BundleError(f"decoding ran past the model's {self.max_positions} text positions")
        if self.state is None:
            self.state = {s.value: s.empty(b) for s in self.runners.state}
        env = dict(self.window)
        env.update(self.state)
        env["tokens"] = tokens
        env["positions"] = np.arange(self.offset, self.offset + t, dtype=np.int64)
        for r in self.runners.per_step:
            if before is not None:
                before(r, env)
            r(env)
        for s in self.runners.state:
            self.state[s.value] = env[s.value]
        self.offset += t
        self.steps += 1
        return env

    def reorder(self, index: np.ndarray) -> None:
        index = np.asarray(index, dtype=np.int64)
        for k, v in (self.state or {}).items():
            self.state[k] = np.ascontiguousarray(v[index])
        # Window values (cross K/V) keep batch 1: the cross-attention graphs broadcast them over the beams.


def window_env(runners: RunnerList, mel: np.ndarray) -> dict[str, np.ndarray]:
    """The per-window runners on one window's mel; every value they wrote (the encoder output among them)."""
    env = {"mel": np.ascontiguousarray(mel, dtype=np.float32)}
    for r in runners.per_window:
        r(env)
    return env


def run_window(runners: RunnerList, mel: np.ndarray) -> dict[str, np.ndarray]:
    """The per-window runners on one window's mel; returns the values the decoder step reads."""
    env = window_env(runners, mel)
    return {k: env[k] for k in runners.window_values}


def complete_window(env: Mapping[str, np.ndarray], ran: RunnerList, target: RunnerList) -> dict[str, np.ndarray]:
    """The values ``target``'s decoder step reads, from a window ``ran`` was run on: only the per-window
    runners ``ran`` did not have run (the cross-attention K/V producers a plan skipped, for its dense check)."""
    have = {r.name for r in ran.per_window}
    out = dict(env)
    for r in target.per_window:
        if r.name not in have:
            r(out)
    return {k: out[k] for k in target.window_values}


class EncodedWindow(dict):
    """A window's decoder-step values that also keep every per-window value (``env``) for a dense check."""

    def __init__(self, values: Mapping[str, np.ndarray], env: Mapping[str, np.ndarray]):
        super().__init__(values)
        self.env = env
        self.dense: dict[str, np.ndarray] | None = None  # the dense decoder's values, completed once per window


__all__ = ["Runner", "RunnerList", "StateInit", "runner_list", "check_dataflow", "run_window", "window_env",
           "complete_window", "EncodedWindow", "GraphDecoderState"]
