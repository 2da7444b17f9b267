"""One Session serving 4 threads at once gives exactly what sequential calls give.

A device app that serves several clients shares one loaded bundle; per-request data lives in the
call, the runner-list cache is locked, and ONNX Runtime sessions run concurrently. Requests mix
budgets (different masks, so runner lists are built concurrently), explicit masks, beams,
languages and trimmed contexts.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("torch")
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

from tiny import noise_clip, tiny_predictor, tiny_whisper  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = tiny_whisper()
    return export_bundle(tmp_path_factory.mktemp("threads") / "b", "cpu", model,
                         gates=tiny_predictor(len(model.gate_names), seed=3), budget=0.3, progress=False,
                         log=lambda m: None)


def requests(n_gates: int) -> list[dict]:
    mask = [i % 3 != 1 for i in range(n_gates)]
    out = []
    for i in range(12):
        r = {"audio": noise_clip(1.0 + 0.25 * (i % 4), seed=i), "language": ("en", "de", None)[i % 3]}
        if i % 4 == 3:
            r["mask"] = mask
        else:
            r["budget"] = (0.0, 0.3, 0.6)[i % 3]
        if i % 5 == 4:
            r["beam_size"] = 2
        if i % 6 == 5:
            r["audio_ctx"] = 16
        out.append(r)
    return out


def run(session: Session, req: dict) -> tuple:
    r = session.transcribe_windows(**req)
    return r.tokens, r.mask, r.language


def test_four_threads_match_sequential_calls(bundle):
    sequential_session = Session.load(bundle, threads=1)
    reqs = requests(len(sequential_session.gate_names))
    expected = [run(sequential_session, r) for r in reqs]
    assert len({tuple(m) for _, m, _ in expected}) >= 3  # the requests really plan different masks

    shared = Session.load(bundle, threads=1)  # fresh: its runner lists get built under contention
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        try:
            start.wait()
            for _ in range(2):  # each request twice, in a different order per thread
                order = np.random.default_rng(k).permutation(len(reqs))
                for i in order:
                    got = run(shared, reqs[i])
                    if i in results and results[i] != got:
                        raise AssertionError(f"request {i} differs between threads")
                    results[i] = got
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert [results[i] for i in range(len(reqs))] == expected
