"""Edge adaptation on a tiny random Whisper: the dynamic-context loss falls, resume is exact, bad input is
refused in one line, and the shipped weight-delta format round-trips."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.errors import ModelError  # noqa: E402
from edgegate.models.whisper import ModelDims, Whisper  # noqa: E402

TINY = dict(n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_text_state=32, n_text_head=2, n_text_layer=2)
PAIRS = [("en", "transcribe"), ("de", "transcribe"), ("de", "translate"), ("es", "translate")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import soundfile as sf

    folder = tmp_path_factory.mktemp("adapt-corpus")
    rng = np.random.default_rng(0)
    lines = []
    for i, (lang, task) in enumerate(PAIRS):
        t = np.arange(int(16000 * (0.6 + 0.3 * i))) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"u{i}.wav", x.astype(np.float32), 16000)
        lines.append(json.dumps({"audio": f"u{i}.wav", "lang": lang, "task": task}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    dims = ModelDims(**TINY)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
    return path


def cfg(corpus: Path, out: Path, tiny_pt: Path, **kw):
    from edgegate.adapt import AdaptConfig

    base = dict(manifests=[str(corpus)], out=str(out), model=str(tiny_pt), teacher_cache=str(out.parent / "cache"),
                steps=8, lr=1e-3, warmup=1, max_tokens=6, keep_unfinished=True, drop_scope="none", augment=False,
                log_every=1, checkpoint_every=4, progress=False, threads=1)
    base.update(kw)
    return AdaptConfig(**base)


def run(c, tokenizer):
    from edgegate.adapt import adapt
    from edgegate.models.loaders import load_whisper

    return adapt(c, model=load_whisper(c.model), tokenizer=tokenizer)


def log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]


def test_dynamic_context_loss_falls(corpus, tiny_pt, tokenizer, tmp_path):
    out = tmp_path / "run"
    run(cfg(corpus, out, tiny_pt, steps=48, margin=(16, 64)), tokenizer)
    losses = [r["hidden"] for r in log(out)]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.5 * first, (first, last)
    assert all(16 <= r["margin"] <= 64 for r in log(out))
    spec = json.loads((out / "adapt.json").read_text())
    assert spec["steps_done"] == 48 and spec["audio_ctx"] == 64
    check_adapted_model_loads(out, tiny_pt)


def test_p_full_shows_the_student_the_whole_window(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.adapt import student_input

    c = replace(cfg(corpus, tmp_path, tiny_pt), p_full=0.5, augment=False)
    samples = np.zeros(16000 * 2, dtype=np.float32)
    seen = [student_input(samples, c, 80, np.random.default_rng(i)) for i in range(40)]
    full = [mel.shape[-1] for mel, margin in seen if margin < 0]
    trimmed = [mel.shape[-1] for mel, margin in seen if margin >= 0]
    assert 8 <= len(full) <= 32 and set(full) == {3000}
    assert max(trimmed) < 3000
    c0 = replace(c, p_full=0.0)
    assert all(m >= 0 for _, m in (student_input(samples, c0, 80, np.random.default_rng(i)) for i in range(20)))


def test_teacher_filter_keeps_the_utterances_the_teacher_got_right(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.adapt import Item, teacher_is_right
    from edgegate.teacher import Targets

    item = Item("u.wav", "en", "transcribe", "the cat sat on the mat")

    def said(text: str) -> Targets:
        return Targets([], tokenizer.encode(" " + text), True, np.zeros((1, 1, 4), np.float16))

    c = replace(cfg(corpus, tmp_path, tiny_pt), teacher_max_wer=0.5)
    assert teacher_is_right(said("The cat sat on the mat."), item, tokenizer, c)
    assert teacher_is_right(said("the cat sat on a hat"), item, tokenizer, c)  # 2 of 6 words wrong
    assert not teacher_is_right(said("Thank you for watching!"), item, tokenizer, c)
    assert teacher_is_right(said("Thank you for watching!"), item, tokenizer, replace(c, teacher_max_wer=None))

    # translate: a right translation in other words fails the WER test and passes the overlap test
    trans = Item("u.wav", "de", "translate", "There are two hundred and seventy-three trees in the garden.")
    reworded = said("In the garden, there are 273 trees.")
    assert not teacher_is_right(reworded, trans, tokenizer, c)
    c2 = replace(c, teacher_translate_overlap=0.3)
    assert teacher_is_right(reworded, trans, tokenizer, c2)
    assert not teacher_is_right(said("Thank you for watching!"), trans, tokenizer, c2)
    assert teacher_is_right(said("the cat sat on a hat"), item, tokenizer, c2)  # transcribe: still WER
    assert not teacher_is_right(said("a dog is in a hat"), item, tokenizer, c2)


def check_adapted_model_loads(out: Path, tiny_pt: Path) -> None:
    """The adapt directory is a model: base + delta, the context rule, and a SHA-256-checked delta."""
    from safetensors.torch import load_file

    from edgegate.models.loaders import load_whisper

    model = load_whisper(out)
    assert model.default_audio_ctx == 64 and load_whisper(tiny_pt).default_audio_ctx is None
    trained = load_file(str(out / "checkpoint" / "trainable.safetensors"))
    params = dict(model.named_parameters())
    base = dict(load_whisper(tiny_pt).named_parameters())
    moved = [k for k in trained if not torch.equal(trained[k], base[k])]
    assert moved
    for k in moved:
        assert (params[k] - trained[k]).abs().max() <= (trained[k] - base[k]).abs().max() / 100 + 1e-7, k
    delta = out / "adaptation.safetensors"
    data = bytearray(delta.read_bytes())
    data[-1] ^= 1
    delta.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        load_whisper(out)


def test_resume_gives_the_same_weights(corpus, tiny_pt, tokenizer, tmp_path):
    from safetensors.torch import load_file

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(cfg(corpus, whole, tiny_pt, drop_scope="both", augment=True), tokenizer)
    run(cfg(corpus, parts, tiny_pt, drop_scope="both", augment=True, stop_after=4), tokenizer)
    assert json.loads((parts / "adapt.json").read_text())["steps_done"] == 4
    with open(parts / "adapt_log.jsonl", "a") as f:  # a run killed after its checkpoint logged step 5
        f.write(json.dumps({"step": 5, "hidden": 9.9}) + "\n")
    run(cfg(corpus, parts, tiny_pt, drop_scope="both", augment=True, resume=True), tokenizer)
    assert [r["step"] for r in log(parts)] == list(range(1, 9))
    a = load_file(str(whole / "checkpoint" / "trainable.safetensors"))
    b = load_file(str(parts / "checkpoint" / "trainable.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_mismatched_run(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.adapt import AdaptError

    out = tmp_path / "run"
    run(cfg(corpus, out, tiny_pt, steps=2, checkpoint_every=2), tokenizer)
    with pytest.raises(AdaptError, match="margin"):
        run(cfg(corpus, out, tiny_pt, steps=4, margin=(8, 32), resume=True), tokenizer)
    with pytest.raises(AdaptError, match="no checkpoint"):
        run(cfg(corpus, tmp_path / "empty", tiny_pt, resume=True), tokenizer)


@pytest.mark.parametrize("change,message", [
    (dict(margin=(16, 4000)), "margin"),
    (dict(margin=(64, 16)), "margin"),
    (dict(drop_scope="middle"), "drop-scope"),
    (dict(drop_max=1.5), "drop-max"),
    (dict(drop_max=0.5, drop_min=0.6), "drop-min"),
    (dict(p_full=1.2), "p-full"),
    (dict(manifests=[]), "no manifest"),
    (dict(teacher_max_wer=0.0), "teacher-max-wer"),
    (dict(teacher_translate_overlap=1.5), "teacher-translate-overlap"),
    (dict(drop_scope="none", drop_only=("encoder.0.mlp",)), "drop-only"),
])
def test_bad_settings_are_one_line_errors(corpus, tiny_pt, tmp_path, change, message):
    from edgegate.adapt import AdaptError

    with pytest.raises(AdaptError, match=message) as exc:
        replace(cfg(corpus, tmp_path, tiny_pt), **change).validate()
    assert "\n" not in str(exc.value)


def test_cli_errors(corpus, tmp_path, capsys):
    from edgegate.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["adapt", "--manifest", str(empty), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert main(["adapt", "--manifest", str(corpus), "--out", str(tmp_path / "o"), "--margin", "a,b"]) == 1
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["adapt", "--manifest", str(corpus), "--out", str(tmp_path / "o"), "--model", str(bogus)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3, lines


def test_weight_delta_round_trip(tmp_path):
    from edgegate.weight_delta import apply_delta, save_delta

    torch.manual_seed(1)
    base = Whisper(ModelDims(**TINY))
    tuned = Whisper(ModelDims(**TINY))
    tuned.load_state_dict(base.state_dict())
    names = ["encoder.blocks.0.mlp.0.weight", "decoder.blocks.1.attn_ln.bias"]
    params = dict(tuned.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(1e-3 * torch.randn_like(params[n]))
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    path = save_delta({n: params[n] for n in names}, before, tmp_path / "d.safetensors",
                      {"base_fingerprint": "abc"})
    apply_delta(base, path, "abc")
    after = dict(base.named_parameters())
    for n in names:
        err = (after[n] - params[n]).abs().max()
        assert err <= (params[n] - before[n]).abs().max() / 100, n
    untouched = "decoder.blocks.0.mlp.0.weight"
    assert torch.equal(after[untouched], before[untouched])
    with pytest.raises(ModelError, match="made for base"):
        apply_delta(base, path, "other")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ModelError, match="not a readable"):
        apply_delta(base, path, "abc")


def test_augmenter_is_seeded_and_keeps_level_bounded():
    from edgegate.data.augment import Augmenter, add_noise

    x = (0.2 * np.sin(np.arange(32000) / 7)).astype(np.float32)
    a = Augmenter(np.random.default_rng(5)).apply(x)
    b = Augmenter(np.random.default_rng(5)).apply(x)
    assert np.array_equal(a, b) and a.dtype == np.float32 and np.abs(a).max() <= 1.0
    assert 0.85 * len(x) < len(a) < 1.15 * len(x)
    noisy = add_noise(x, 10.0, "white", np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x).astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.5


def test_decoder_only_adaptation_of_a_context_tail_model(corpus, tiny_pt, tokenizer, tmp_path):
    """--train decoder leaves the encoder as it was; the student trains on trimmed windows with the tail,
    and the result says so, so that it loads with the tail again."""
    from edgegate.adapt import adapt
    from edgegate.models.loaders import load_whisper
    from edgegate.weight_delta import read_delta

    out = tmp_path / "run"
    model = load_whisper(tiny_pt)
    model.context_tail = True
    adapt(cfg(corpus, out, tiny_pt, steps=4, train="decoder", drop_scope="decoder"), model=model, tokenizer=tokenizer)
    spec = json.loads((out / "adapt.json").read_text())
    assert spec["context_tail"] is True
    names = set(read_delta(out / spec["delta"])[0])
    assert names and all(n.startswith("decoder.") for n in names)
    assert load_whisper(out).context_tail


def test_teacher_on_the_models_own_context(corpus, tiny_pt, tokenizer, tmp_path):
    """--teacher-audio-ctx auto: the teacher's targets come from the trimmed window (its own cache keys, so a
    full-window cache never serves them); a model without a context rule is refused before any work."""
    import soundfile as sf

    from edgegate.adapt import AdaptError, adapt
    from edgegate.data.manifest import read_manifest
    from edgegate.models.loaders import load_whisper
    from edgegate.teacher import TeacherCache, teacher_targets

    with pytest.raises(AdaptError, match="no encoder-context rule"):
        adapt(cfg(corpus, tmp_path / "plain", tiny_pt, teacher_context="auto"), model=load_whisper(tiny_pt),
              tokenizer=tokenizer)
    assert not (tmp_path / "cache").exists() or len(TeacherCache(tmp_path / "cache")) == 0
    model = load_whisper(tiny_pt)
    model.default_audio_ctx = 16
    adapt(cfg(corpus, tmp_path / "run", tiny_pt, steps=2, teacher_context="auto", train="decoder"), model=model,
          tokenizer=tokenizer)
    cache = TeacherCache(tmp_path / "cache")
    served = 0
    for item in read_manifest(corpus):
        assert cache.get(cache.key(item.audio, item.lang, item.task, 6)) is None
        cached = cache.get(cache.key(item.audio, item.lang, item.task, 6, 16))
        if cached is None:
            continue
        served += 1
        samples = sf.read(item.audio, dtype="float32")[0]
        trimmed = teacher_targets(load_whisper(tiny_pt), tokenizer, samples, item.lang, item.task, 6, margin=16)
        full = teacher_targets(load_whisper(tiny_pt), tokenizer, samples, item.lang, item.task, 6)
        n = min(trimmed.hidden.shape[1], cached.hidden.shape[1], full.hidden.shape[1])
        assert np.allclose(cached.hidden[:, :n], trimmed.hidden[:, :n], atol=2e-2)
        assert not np.allclose(full.hidden[:, :n], trimmed.hidden[:, :n], atol=2e-2)
    assert served >= 1


def test_registered_edge_model_with_a_shipped_delta(tiny_pt, tmp_path, monkeypatch):
    """A registered edge model whose weight delta ships in the package: loaded onto its base by SHA-256, and
    refused with one line once the file is changed."""
    from edgegate.models import registry
    from edgegate.models.loaders import load_whisper
    from edgegate.runtimes.bundle import sha256_file
    from edgegate.weight_delta import model_fingerprint, save_delta

    monkeypatch.setenv("EDGEGATE_CACHE", str(tmp_path / "cache"))
    assets = tmp_path / "assets"
    (assets / registry.MODEL_ASSETS).mkdir(parents=True)
    monkeypatch.setattr("edgegate.gate_set.ASSETS_DIR", assets)
    base = load_whisper(tiny_pt)
    params = {n: p.detach().clone() for n, p in base.named_parameters()}
    name = "decoder.blocks.0.mlp.0.weight"
    tuned = {name: params[name] + 0.01}
    delta = assets / registry.MODEL_ASSETS / "tiny-edge.safetensors"
    save_delta(tuned, params, delta, {"base_fingerprint": model_fingerprint(base)})
    monkeypatch.setitem(registry.EDGE_MODELS, "tiny-edge", {
        "base_model": str(tiny_pt), "delta_asset": delta.name, "delta_sha256": sha256_file(delta), "audio_ctx": 16,
        "context_tail": True})
    model = load_whisper(registry.resolve_model("tiny-edge"))
    loaded = dict(model.named_parameters())[name].detach()
    assert torch.allclose(loaded, tuned[name], atol=1e-4) and model.default_audio_ctx == 16 and model.context_tail
    delta.write_bytes(delta.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="SHA-256") as exc:
        load_whisper(registry.resolve_model("tiny-edge"))
    assert "\n" not in str(exc.value)


def test_second_phase_starts_from_a_run_and_drops_what_the_gates_drop(corpus, tiny_pt, tokenizer, tmp_path):
    """--init-from continues an earlier run's weights (the delta stays one file to the unmodified model);
    --masks-from runs the non-dense utterances with the gate set's plans, even with no random drop scope."""
    from edgegate.adapt import adapt
    from edgegate.gate_set import GATES_FILE, PREDICTOR_FILE, GateSpec
    from edgegate.models.loaders import load_whisper
    from edgegate.predictor import save_predictor

    from tiny import tiny_predictor

    first = tmp_path / "first"
    run(cfg(corpus, first, tiny_pt, steps=4, drop_scope="decoder"), tokenizer)
    model = load_whisper(tiny_pt)
    gates = tmp_path / "gates"
    gates.mkdir()
    save_predictor(tiny_predictor(len(model.gate_names), n_mels=model.dims.n_mels), gates / PREDICTOR_FILE)
    (gates / GATES_FILE).write_text(json.dumps(GateSpec(model="tiny", scope="decoder", adapt="none",
                                                        audio_ctx=16).to_dict()))
    second = tmp_path / "second"
    adapt(cfg(corpus, second, tiny_pt, steps=8, lr=1e-12, drop_scope="none", p_dense=0.0, drop_max=0.9,
              init_from=str(first), masks_from=str(gates)), model=model, tokenizer=tokenizer)
    dropped = [r["dropped"] for r in log(second) if "dropped" in r]
    assert dropped and max(dropped) > 0
    a, b = dict(load_whisper(first).named_parameters()), dict(load_whisper(second).named_parameters())
    changed = [n for n in a if not torch.equal(a[n], dict(load_whisper(tiny_pt).named_parameters())[n])]
    assert changed
    for n in changed:
        assert torch.allclose(a[n], b[n], atol=1e-3), n
    with pytest.raises(ModelError, match="adaptation spec"):
        adapt(cfg(corpus, tmp_path / "third", tiny_pt, steps=1, init_from=str(tmp_path)), model=load_whisper(tiny_pt),
              tokenizer=tokenizer)


def test_drop_min_puts_the_planned_budgets_in_range(tiny_pt):
    """--drop-min / --drop-max bound the budget each non-dense utterance is planned at (--masks-from)."""
    from edgegate.adapt import draw_mask
    from edgegate.adapt_config import AdaptConfig
    from edgegate.models.loaders import load_whisper

    model = load_whisper(tiny_pt)
    asked: list[float] = []

    def planned(budget: float) -> list[bool]:
        asked.append(budget)
        return [True] * len(model.gate_names)

    rng = np.random.default_rng(0)
    c = AdaptConfig(manifests=["x"], out="x", model="x", drop_scope="none", p_dense=0.0, drop_min=0.4, drop_max=0.6)
    for _ in range(200):
        draw_mask(model, c, rng, planned)
    assert len(asked) == 200 and min(asked) >= 0.4 and max(asked) <= 0.6 and max(asked) - min(asked) > 0.15


def test_drop_only_confines_random_drops_to_the_named_modules(corpus, tiny_pt, tokenizer, tmp_path):
    """--drop-only: the named modules are dropped (at p ~ U(drop_min, drop_max)), no other; a name that is not
    a module of the model is refused before any training."""
    from edgegate.adapt import AdaptError, draw_mask
    from edgegate.adapt_config import AdaptConfig
    from edgegate.models.loaders import load_whisper

    model = load_whisper(tiny_pt)
    named = (model.gate_names[1], model.gate_names[2])
    c = AdaptConfig(manifests=["x"], out="x", model="x", drop_scope="encoder", drop_only=named, p_dense=0.0,
                    drop_min=0.5, drop_max=0.9)
    assert all(n.startswith("encoder.") for n in named)
    rng, dropped = np.random.default_rng(0), np.zeros(len(model.gate_names))
    for _ in range(200):
        dropped += ~np.asarray(draw_mask(model, c, rng))
    inside = [model.gate_names.index(n) for n in named]
    assert all(dropped[i] > 60 for i in inside)
    assert dropped.sum() == dropped[inside].sum()  # nothing outside the named modules
    with pytest.raises(AdaptError, match="not modules of"):
        run(cfg(corpus, tmp_path / "bad", tiny_pt, steps=2, drop_scope="encoder", drop_only=("encoder.99.mlp",)),
            tokenizer)


def test_rejected_utterances_are_stood_in_for(corpus, tiny_pt, tokenizer, tmp_path, monkeypatch):
    """--retry-rejected: a step whose utterance the teacher filter rejects learns from another one instead of
    idling; with 0 it idles, as before. The stand-ins are seeded: the same run twice learns the same."""
    import edgegate.adapt as adapt_mod
    from edgegate.adapt import AdaptError

    # the filter accepts one utterance of the corpus, as if the teacher had hallucinated on the others
    monkeypatch.setattr(adapt_mod, "teacher_is_right", lambda targets, item, tok, c: item.audio.endswith("u1.wav"))
    used = {}
    for n in (0, 6):
        out = tmp_path / f"retry{n}"
        run(cfg(corpus, out, tiny_pt, steps=12, retry_rejected=n), tokenizer)
        used[n] = sum(r["used"] for r in log(out))
        if n:
            assert all(0 <= r["retried"] <= n for r in log(out) if "retried" in r)
    assert used[0] <= 12 // 2 < used[6], used
    again = tmp_path / "retry6b"
    run(cfg(corpus, again, tiny_pt, steps=12, retry_rejected=6), tokenizer)
    assert [r["hidden"] for r in log(again) if "hidden" in r] == \
        [r["hidden"] for r in log(tmp_path / "retry6") if "hidden" in r]
    with pytest.raises(AdaptError, match="retry-rejected"):
        run(cfg(corpus, tmp_path / "bad", tiny_pt, retry_rejected=-1), tokenizer)


def test_a_checkpoint_from_before_retries_resumes_only_without_them(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.adapt import AdaptError

    out = tmp_path / "old"
    run(cfg(corpus, out, tiny_pt, steps=2, checkpoint_every=2, retry_rejected=0), tokenizer)
    state = out / "checkpoint" / "state.json"
    s = json.loads(state.read_text())
    del s["config"]["retry_rejected"]  # as written before the setting existed, when rejected steps idled
    state.write_text(json.dumps(s))
    with pytest.raises(AdaptError, match="retry_rejected=0"):
        run(cfg(corpus, out, tiny_pt, steps=4, resume=True), tokenizer)
    assert run(cfg(corpus, out, tiny_pt, steps=4, resume=True, retry_rejected=0), tokenizer)["steps_done"] == 4
