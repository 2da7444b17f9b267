"""The runner list runs any family's manifest: an E-Branchformer-shaped layer written by hand.

No Whisper and no file: module specs as a manifest would list them, numpy functions as the
"graphs". The layer is OWSM's: a macaron FFN, two parallel branches from the same input (attention
and cgMLP) whose skipped side feeds zeros into the merge, a merge that runs while either branch is
kept (and is skipped when both are), a final FFN and norm; then a decoder step with a KV cache.
The runner list must give what the documented semantics give, mask by mask.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgegate.errors import BundleError
from edgegate.runtimes.backends.base import Module
from edgegate.runtimes.execution import GraphDecoderState, run_window, runner_list
from edgegate.runtimes.schema import GraphSpec, ModuleSpec, TensorSpec

D = 4
GATES = ["encoder.0.ffn_macaron", "encoder.0.attn", "encoder.0.cgmlp", "encoder.0.ffn", "decoder.0.self_attn"]
RNG = np.random.default_rng(0)
W_MERGE = RNG.standard_normal((2 * D, D)).astype(np.float32)
B_MERGE = RNG.standard_normal(D).astype(np.float32)
W_OUT = RNG.standard_normal((D, 7)).astype(np.float32)


def t(name, shape, value=None, dtype="float32"):
    return TensorSpec(name, dtype, tuple(shape), value or name)


X = ["batch", "frames", D]


class Fn(Module):
    def __init__(self, name, fn, inputs, outputs, calls):
        self.name, self.fn, self.calls = name, fn, calls
        self.input_names, self.output_names = tuple(inputs), tuple(outputs)

    def run(self, feed):
        self.calls.append(self.name)
        return list(self.fn(*(feed[n] for n in self.input_names)))


def spec(name, stage, gates, inputs, outputs, skip="identity", kind="m"):
    return ModuleSpec(name, kind, stage, 0, tuple(gates), GraphSpec(name, stage, f"{name}.onnx", None, tuple(inputs),
                                                                    tuple(outputs)), skip=skip)


def layer():
    specs = [
        spec("encoder.stem", "encoder", [], [t("mel", ["batch", "frames", D])], [t("x", X)]),
        spec("encoder.0.ffn_macaron", "encoder", [GATES[0]], [t("x", X)], [t("x_out", X, "x")]),
        spec("encoder.0.attn", "encoder", [GATES[1]], [t("x", X)], [t("a", X, "branch_a")], skip="zeros"),
        spec("encoder.0.cgmlp", "encoder", [GATES[2]], [t("x", X)], [t("b", X, "branch_b")], skip="zeros"),
        spec("encoder.0.merge", "encoder", GATES[1:3], [t("x", X), t("a", X, "branch_a"), t("b", X, "branch_b")],
             [t("x_out", X, "x")]),
        spec("encoder.0.ffn", "encoder", [GATES[3]], [t("x", X)], [t("x_out", X, "x")]),
        spec("encoder.norm", "encoder", [], [t("x", X)], [t("xa", X)]),
        spec("decoder.embed", "decoder_step", [], [t("tokens", ["batch", "tokens"], dtype="int64")],
             [t("x", ["batch", "tokens", D])]),
        spec("decoder.0.self_attn", "decoder_step", [GATES[4]],
             [t("x", ["batch", "tokens", D]), t("k_cache", ["batch", "past", D], "self_k.0")],
             [t("x_out", ["batch", "tokens", D], "x"), t("k_out", ["batch", "total", D], "self_k.0")]),
        spec("decoder.logits", "decoder_step", [], [t("x", ["batch", "tokens", D]), t("xa", X)],
             [t("logits", ["batch", 7])]),
    ]
    fns = {
        "encoder.stem": lambda mel: [mel * 1.0],
        "encoder.0.ffn_macaron": lambda x: [x + 0.5 * np.tanh(x)],
        "encoder.0.attn": lambda x: [np.sin(x)],
        "encoder.0.cgmlp": lambda x: [0.3 * np.cos(x)],
        "encoder.0.merge": lambda x, a, b: [x + np.concatenate([a, b], -1) @ W_MERGE + B_MERGE],
        "encoder.0.ffn": lambda x: [x + 0.5 * np.tanh(2 * x)],
        "encoder.norm": lambda x: [(x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)],
        "decoder.embed": lambda tok: [np.repeat(tok[..., None].astype(np.float32) / 10, D, -1)],
        "decoder.0.self_attn": lambda x, k: [x + k.sum(1, keepdims=True) * 0.1, np.concatenate([k, x], 1)],
        "decoder.logits": lambda x, xa: [(x[:, -1] + xa.mean(1)) @ W_OUT],
    }
    calls: list[str] = []
    mods = {s.name: Fn(s.name, fns[s.name], [i.name for i in s.inputs], [o.name for o in s.outputs], calls)
            for s in specs}
    return specs, mods, calls


def reference(mel, keep):
    ffn_m, attn, cgmlp, ffn, _ = keep
    x = mel * 1.0
    if ffn_m:
        x = x + 0.5 * np.tanh(x)
    if attn or cgmlp:  # a skipped branch feeds zeros; both skipped: no merge at all
        a = np.sin(x) if attn else np.zeros_like(x)
        b = 0.3 * np.cos(x) if cgmlp else np.zeros_like(x)
        x = x + np.concatenate([a, b], -1) @ W_MERGE + B_MERGE
    if ffn:
        x = x + 0.5 * np.tanh(2 * x)
    return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)


MASKS = {"dense": [1, 1, 1, 1, 1], "attn-skipped": [1, 0, 1, 1, 1], "cgmlp-skipped": [1, 1, 0, 1, 0],
         "both-branches-skipped": [0, 0, 0, 1, 1], "ffn-skipped": [1, 1, 1, 0, 0]}


@pytest.mark.parametrize("which", list(MASKS))
def test_branch_and_merge_semantics(which):
    specs, mods, calls = layer()
    keep = np.array(MASKS[which], dtype=bool)
    runners = runner_list(specs, GATES, keep, mods, {}, ["self_k.0"])
    mel = RNG.standard_normal((1, 6, D)).astype(np.float32)
    window = run_window(runners, mel)
    np.testing.assert_allclose(window["xa"], reference(mel, keep), rtol=1e-5, atol=1e-6)
    merge_ran = "encoder.0.merge" in calls
    assert merge_ran == bool(keep[1] or keep[2])
    assert ("encoder.0.attn" in calls) == keep[1] and ("encoder.0.cgmlp" in calls) == keep[2]
    # the decoder step: the cache grows when its module is kept, and follows beams on reorder
    state = GraphDecoderState(runners, window, max_positions=8)
    first = state.step(np.array([[1, 2, 3]], np.int64))
    assert first.shape == (1, 7)
    state.reorder(np.array([0, 0], np.int64))
    second = state.step(np.array([[4], [5]], np.int64))
    assert second.shape == (2, 7)
    if keep[4]:
        assert state.state["self_k.0"].shape == (2, 4, D)
    else:
        assert state.state == {}  # a skipped module's cache is never created
    with pytest.raises(BundleError, match="text positions"):
        state.step(np.zeros((2, 5), np.int64))


def test_a_value_nobody_writes_is_one_bundle_error():
    specs, mods, _ = layer()
    broken = [s if s.name != "encoder.norm" else spec("encoder.norm", "encoder", [], [t("x", X, "nowhere")],
                                                       [t("xa", X)]) for s in specs]
    with pytest.raises(BundleError, match="reads 'nowhere'"):
        runner_list(broken, GATES, np.ones(5, bool), mods, {}, ["self_k.0"])


def test_zeros_need_the_axis_sizes_from_the_inputs():
    specs, mods, _ = layer()
    odd = [s if s.name != "encoder.0.attn" else
           spec("encoder.0.attn", "encoder", [GATES[1]], [t("x", X)], [t("a", ["batch", "tokens", D], "branch_a")],
                skip="zeros") for s in specs]
    keep = np.array(MASKS["attn-skipped"], dtype=bool)
    with pytest.raises(BundleError, match="size of tokens"):
        runner_list(odd, GATES, keep, mods, {}, ["self_k.0"])
