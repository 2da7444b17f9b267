"""``edgegate inspect BUNDLE``: modules, sizes, costs, profile and the hash check of a bundle."""

from __future__ import annotations

import argparse
import json

HELP = """Show what a bundle holds and check its integrity (SHA-256 of every file).

Exit code 1 when any file is missing, truncated or modified. Torch-free.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a bundle's modules, sizes, costs and hash check", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory written by edgegate export")
    p.add_argument("--json", action="store_true", help="print JSON (manifest summary + hash check)")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check")
    p.set_defaults(func=run)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _shape(dims: dict, limits) -> str:
    if {"n_audio_layer", "n_audio_state", "n_text_layer", "n_text_state"} <= dims.keys():
        return (f"encoder {dims['n_audio_layer']}x{dims['n_audio_state']}, decoder {dims['n_text_layer']}x"
                f"{dims['n_text_state']}, vocab {limits.n_vocab}")
    if {"n_encoder_layers", "d_model", "n_decoder_layers"} <= dims.keys():  # OWSM
        return (f"E-Branchformer encoder {dims['n_encoder_layers']}x{dims['d_model']}, decoder "
                f"{dims['n_decoder_layers']}x{dims['d_model']}, vocab {limits.n_vocab}")
    return ", ".join(f"{k} {v}" for k, v in dims.items()) + f", vocab {limits.n_vocab}"


def report(bundle, checks) -> str:
    m = bundle.manifest
    dims = m["model"]["dims"]
    files = m["files"]
    prof = m.get("profile") or {}
    budget = m.get("budget")
    pred = m.get("predictor")
    prov = m.get("provenance") or {}
    lines = [
        f"bundle   {bundle.path}",
        f"schema   {m['format']} v{m['schema_version']}  ({m.get('module_format', 'onnx')} modules)",
        f"model    {m['model'].get('family')} {m['model'].get('name')}: {_shape(dims, bundle.limits)}",
        f"profile  {prof.get('name', '?')}: backends {','.join(prof.get('backends', []))}, "
        f"{prof.get('precision', '?')}, {prof.get('threads', '?')} threads",
        "budget   " + (f"{budget['value']:g} (scope {budget['scope']}, {budget['cost_unit']})" if budget
                       else "none: no gate predictor, runs dense unless a mask is given"),
        "weights  " + (", ".join(f"{p}: {q.get('method')} ({q.get('weights')})"
                                 for p, q in (m.get("quantization") or {}).items()) or "fp32"),
        "context  " + ("full 30-s encoder context" if (m.get("decoding") or {}).get("audio_ctx") is None
                       else f"the audio + {m['decoding']['audio_ctx']} encoder positions (dynamic)"),
        "predictor " + (f"{pred['file']} ({_mb(files[pred['file']]['bytes'])} MB)" if pred else "none"),
        f"exported {prov.get('created_utc', '?')} by edgegate {prov.get('edgegate', '?')}, "
        f"torch {prov.get('torch', '?')}, opset {prov.get('onnx_opset', '?')}",
        "",
    ]
    gate_costs = m["costs"]["gates"]
    total_gated = sum(gate_costs.values())
    always = sum(m["costs"].get("always_on", {}).values())
    status = {c.file: ("ok" if c.ok else "FAILED") for c in checks} if checks is not None else {}
    rows = [("module", "kind", "stage", "precision", "MB", "GFLOPs", "adapter", "hash")]
    # An ExecuTorch bundle holds every module as a method of one .pte: its size is not per module.
    users: dict[str, int] = {}
    for mod in bundle.modules:
        users[mod.file] = users.get(mod.file, 0) + 1
    for mod in bundle.modules:
        size = files.get(mod.file, {}).get("bytes", 0)
        rows.append((mod.name, mod.kind, mod.stage, mod.precision, _mb(size) if users[mod.file] == 1 else "shared",
                     f"{mod.flops / 1e9:.3f}",
                     "yes" if mod.adapter else "", status.get(mod.file, "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    for f, n in users.items():
        if n > 1:
            lines.append(f"shared   {f} ({_mb(files.get(f, {}).get('bytes', 0))} MB) holds {n} modules as methods")
    table = m.get("token_embedding")
    if table:
        lines.append(f"shared   {table['file']} ({_mb(table['bytes'])} MB, {table['precision']} token embedding) "
                     f"read by {', '.join(table['users'])}")
    vocab = m.get("vocabulary")
    if vocab:
        lines.append(f"vocab    shards {', '.join(f'{k} {v}' for k, v in vocab['sizes'].items())} rows of "
                     f"{bundle.limits.n_vocab}; on by default: {', '.join(vocab['default_on'])} (translate: "
                     f"{vocab['translate']}); Session.load(full_vocab=True) turns them off")
    lines.append(f"total    {len(files)} files, {_mb(bundle.total_bytes())} MB; "
                 f"gateable {total_gated / 1e9:.2f} GFLOPs + always-on {always / 1e9:.2f} GFLOPs "
                 f"(at {m['costs']['n_frames']} frames, {m['costs']['n_tokens']} tokens)")
    ms = m["costs"].get("ms")
    if ms:
        meta = m["costs"].get("ms_meta") or {}
        lines.append(f"measured gateable {sum(ms.values()):.1f} ms + always-on "
                     f"{sum(m['costs'].get('ms_always_on', {}).values()):.1f} ms per utterance "
                     f"({meta.get('backend', '?')}, {meta.get('threads', '?')} threads, {meta.get('date_utc', '?')}; "
                     "edgegate profile)")
    if checks is None:
        lines.append("hashes   not checked (--no-verify)")
    else:
        bad = [c for c in checks if not c.ok]
        lines.append(f"hashes   ok ({len(checks)} files)" if not bad else
                     "hashes   FAILED: " + "; ".join(f"{c.file}: {c.problem}" for c in bad))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from edgegate.runtimes.bundle import Bundle

    bundle = Bundle.open(args.bundle, verify=False)
    checks = None if args.no_verify else bundle.verify(raise_on_error=False)
    if args.json:
        out = {
            "bundle": str(bundle.path), "manifest": {k: v for k, v in bundle.manifest.items() if k != "files"},
            "files": bundle.manifest["files"],
            "hash_check": None if checks is None else [{"file": c.file, "ok": c.ok, "problem": c.problem}
                                                       for c in checks],
        }
        print(json.dumps(out, indent=1))
    else:
        print(report(bundle, checks))
    return 1 if checks is not None and not all(c.ok for c in checks) else 0
