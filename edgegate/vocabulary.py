"""Output-token shards per (language, task): a gate on the vocabulary projection.

On a CPU ~70 % of a Whisper-base decoder step is the 51,865-row output projection, yet a request's
context (language, task) rules most rows out: German speech transcribed never needs Cyrillic or
CJK pieces. A *shard* is the sorted set of token ids a language's real text uses, plus every token
that is not text (special, language, task and timestamp tokens), the 256 single-byte tokens (so any
string stays spellable) and the tokens without a letter (digits, punctuation). The logits graph then
computes only the shard's rows and :func:`scatter_logits` puts them back at their vocabulary ids,
so decoding is unchanged. Translation outputs English, so ``translate`` uses the English shard.

Shards are built from word lists (``wordfreq``) and sentences (``edgegate.data.texts``) on the
export side (:func:`build_shards`, which imports those lazily) and stored as one ``.npz`` of int32
arrays with a JSON metadata string (loaded with ``allow_pickle=False``). The runtime side
(:class:`VocabularyShards`, :func:`scatter_logits`) needs numpy and the tokenizer only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import EdgegateError
from edgegate.tokenizer import LANGUAGES, TASKS, WhisperTokenizer, byte_chars, restore_missing_merges

FORMAT = 1
SHARD_LANGUAGES = ("en", "de", "es", "fr", "it")
# Word-form variants tokenised per word: as listed (wordfreq lists are lower case) and capitalised,
# each alone (start of text, after a quote) and after a space (inside a sentence).
CASES = ("lower", "title")
DEFAULT_WORDS = 50_000
SHIPPED = Path(__file__).parent / "assets" / "vocab" / "whisper-multilingual-51865.npz"
# Shards on by default: where docs/speed.md section 3 measured zero dense tokens outside the shard and no
# quality change (wf50000 + texts). fr had one hallucinated English word outside its shard: off by default.
# Translate decodes English, so the English shard serves every language's translate.
DEFAULT_ON = ("en", "de", "es", "it")


class VocabularyError(EdgegateError):
    """A vocabulary shard file or request cannot be used (bad file, unknown language or task)."""


def _raw(tokenizer: WhisperTokenizer | Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a WhisperTokenizer (or the object itself)."""
    return getattr(tokenizer, "_tok", tokenizer)


@lru_cache(maxsize=1)
def _byte_index() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_chars())}


def token_bytes(tokenizer: WhisperTokenizer | Any, token_id: int) -> bytes | None:
    """The raw bytes a BPE token stands for (None for ids the tokenizer does not know)."""
    piece = _raw(tokenizer).id_to_token(int(token_id))
    if piece is None:
        return None
    index = _byte_index()
    if any(c not in index for c in piece):  # an added (special) token: its own text
        return piece.encode()
    return bytes(index[c] for c in piece)


def tokenizer_fingerprint(tokenizer: WhisperTokenizer | Any) -> str:
    """SHA-256 over the tokenizer's (token, id) table: shards are only valid for that table."""
    vocab = _raw(tokenizer).get_vocab(with_added_tokens=True)
    h = hashlib.sha256()
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{i}\t{piece}\n".encode())
    return h.hexdigest()


def always_tokens(tokenizer: WhisperTokenizer, n_vocab: int) -> np.ndarray:
    """Ids every shard holds: specials and timestamps (>= <|endoftext|>), single bytes, letterless tokens."""
    keep = set(range(tokenizer.eot, n_vocab))
    raw = _raw(tokenizer)
    for ch in byte_chars():
        i = raw.token_to_id(ch)
        if i is not None:
            keep.add(i)
    for i in range(tokenizer.eot):
        data = token_bytes(tokenizer, i)
        if data is None:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # a fragment of a multi-byte character: only real text adds those
            continue
        if not any(unicodedata.category(c).startswith("L") for c in text):
            keep.add(i)
    return np.array(sorted(keep), dtype=np.int32)


def word_variants(words: Iterable[str], cases: Sequence[str] = CASES) -> list[str]:
    """Each word in every case of ``cases`` ('lower', 'title', 'upper'), bare and after a space."""
    forms = {"lower": str, "title": lambda w: w[:1].upper() + w[1:], "upper": str.upper}
    unknown = [c for c in cases if c not in forms]
    if unknown:
        raise VocabularyError(f"unknown word case {unknown[0]!r}; use lower, title or upper")
    out: set[str] = set()
    for w in words:
        w = w.strip()
        if not w:
            continue
        for case in cases:
            v = forms[case](w)
            out.update((v, " " + v))
    return sorted(out)


def text_encoder(tokenizer: WhisperTokenizer | Any) -> Any:
    """A ``tokenizers.Tokenizer`` that splits text into the tokens the model emits (see
    ``edgegate.tokenizer.restore_missing_merges``: a ``WhisperTokenizer`` is already repaired)."""
    return restore_missing_merges(_raw(tokenizer))


def text_token_ids(tokenizer: WhisperTokenizer, texts: Iterable[str]) -> set[int]:
    """Every token id the model's tokenisation uses for ``texts`` (each also tried after a leading space)."""
    raw = text_encoder(tokenizer)
    batch = []
    for t in texts:
        batch.extend((t, " " + t.lstrip()))
    ids: set[int] = set()
    for start in range(0, len(batch), 8192):
        for enc in raw.encode_batch(batch[start: start + 8192], add_special_tokens=False):
            ids.update(enc.ids)
    return ids


def build_shard(tokenizer: WhisperTokenizer, n_vocab: int, words: Iterable[str] = (), sentences: Iterable[str] = (),
                cases: Sequence[str] = CASES) -> np.ndarray:
    """The sorted int32 shard for one language from its words and sentences."""
    ids = set(always_tokens(tokenizer, n_vocab).tolist())
    ids |= text_token_ids(tokenizer, word_variants(words, cases))
    ids |= text_token_ids(tokenizer, sentences)
    return np.array(sorted(i for i in ids if 0 <= i < n_vocab), dtype=np.int32)


def shard_language(language: str, task: str) -> str:
    """The shard a request uses: its language's for transcribe, English's for translate."""
    if task not in TASKS:
        raise VocabularyError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    return "en" if task == "translate" else language


def scatter_logits(shard_logits: np.ndarray, shard: np.ndarray, n_vocab: int, fill: float = -np.inf) -> np.ndarray:
    """(..., len(shard)) logits over the shard's rows -> (..., n_vocab) with ``fill`` elsewhere."""
    if shard_logits.shape[-1] != len(shard):
        raise VocabularyError(f"logits have {shard_logits.shape[-1]} columns but the shard has {len(shard)} tokens; "
                              "the logits graph and the shard do not match")
    out = np.full((*shard_logits.shape[:-1], n_vocab), fill, dtype=shard_logits.dtype)
    out[..., shard] = shard_logits
    return out


@dataclass
class VocabularyShards:
    """Shards per language for one tokenizer and vocabulary size."""

    shards: dict[str, np.ndarray]
    n_vocab: int
    tokenizer_sha256: str
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted(self.shards)

    def shard(self, language: str, task: str = "transcribe") -> np.ndarray:
        """The request's shard; a language without one is an error (see :meth:`select`)."""
        key = shard_language(_check_language(language), task)
        if key not in self.shards:
            raise VocabularyError(f"no vocabulary shard for language {key!r} (shards: {', '.join(self.languages)}); "
                                  "decode with the full vocabulary or rebuild the shards with that language")
        return self.shards[key]

    def select(self, language: str | None, task: str = "transcribe") -> np.ndarray | None:
        """What a planner uses: the shard, or None (full vocabulary) when the language is not known
        yet (to be detected) or has no shard. Unknown language codes and tasks still raise."""
        if language is None:
            shard_language("en", task)  # validates the task
            return None
        key = shard_language(_check_language(language), task)
        return self.shards.get(key)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` atomically (temp file beside it, then a rename)."""
        path = Path(path)
        meta = {"format": FORMAT, "n_vocab": self.n_vocab, "tokenizer_sha256": self.tokenizer_sha256,
                "languages": self.languages, "sizes": {k: int(len(v)) for k, v in self.shards.items()},
                "sources": self.sources}
        arrays = {f"shard_{k}": np.asarray(v, dtype=np.int32) for k, v in self.shards.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, tokenizer: WhisperTokenizer | None = None,
             n_vocab: int | None = None) -> VocabularyShards:
        """Read and validate a shard file (against ``tokenizer`` and ``n_vocab`` when given)."""
        path = Path(path)
        if not path.is_file():
            raise VocabularyError(f"vocabulary shard file {path} not found; build it with "
                                  "edgegate.vocabulary.build_shards (python benchmarks/vocab_coverage.py writes "
                                  "edgegate/assets/vocab) or decode with the full vocabulary")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                shards = {k[len("shard_"):]: np.array(data[k]) for k in data.files if k.startswith("shard_")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise VocabularyError(f"{path} is not a vocabulary shard file ({exc}); rebuild it") from None
        if meta.get("format") != FORMAT:
            raise VocabularyError(f"{path}: shard format {meta.get('format')!r}, this edgegate reads {FORMAT}; rebuild")
        out = cls(shards, int(meta["n_vocab"]), str(meta["tokenizer_sha256"]), meta.get("sources", {}))
        out.validate(tokenizer, n_vocab, where=str(path))
        return out

    def validate(self, tokenizer: WhisperTokenizer | None = None, n_vocab: int | None = None,
                 where: str = "shards") -> None:
        if n_vocab is not None and n_vocab != self.n_vocab:
            raise VocabularyError(f"{where}: built for a {self.n_vocab}-token vocabulary, the model has {n_vocab}; "
                                  "rebuild the shards for this model")
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != self.tokenizer_sha256:
            raise VocabularyError(f"{where}: built for another tokenizer; rebuild the shards with this model's")
        for lang, s in self.shards.items():
            ok = s.dtype == np.int32 and s.ndim == 1 and len(s) > 0
            ok = ok and bool(np.all(np.diff(s) > 0)) and s[0] >= 0 and s[-1] < self.n_vocab
            if not ok:
                raise VocabularyError(f"{where}: shard {lang!r} is not a sorted unique int32 array of ids "
                                      f"below {self.n_vocab}; rebuild it")
            if s[-1] != self.n_vocab - 1:  # the last timestamp: every shard keeps all specials
                raise VocabularyError(f"{where}: shard {lang!r} lacks the special/timestamp tokens; rebuild it")


def shipped_shards(tokenizer: WhisperTokenizer, n_vocab: int) -> VocabularyShards | None:
    """The shipped shards when they fit this tokenizer and vocabulary size, else None (full vocabulary)."""
    if not SHIPPED.is_file():
        return None
    try:
        return VocabularyShards.load(SHIPPED, tokenizer, n_vocab)
    except VocabularyError:
        return None


def _check_language(language: str) -> str:
    key = str(language).strip().lower()
    if key not in LANGUAGES:
        raise VocabularyError(f"unknown language {language!r}; use a Whisper language code such as "
                              f"{', '.join(SHARD_LANGUAGES)}")
    return key


# -- building (export side: wordfreq and the project's text sources, imported lazily) ------------------
def wordfreq_words(language: str, n: int) -> list[str]:
    """The ``n`` most frequent words of ``language`` (wordfreq's 'best' list)."""
    try:
        import wordfreq
    except ImportError:
        raise VocabularyError("building vocabulary shards needs wordfreq: pip install wordfreq==3.1.1") from None
    return wordfreq.top_n_list(language, n)


def project_sentences(language: str, n_templates: int = 2000) -> list[str]:
    """edgegate.data.texts: every clean fortune sentence of the language (if it has a package) plus
    ``n_templates`` filled templates (their source side, and for English every language's English side)."""
    from edgegate.data import texts

    out = [s for s, _ in texts.fortune_sentences(language)] if texts.has_fortunes(language) else []
    if language == "en":
        for lang in texts.LANGUAGES:
            out += [p.reference for p in texts.template_pairs(lang, n_templates, seed="vocabulary")]
    else:
        out += [p.text for p in texts.template_pairs(language, n_templates, seed="vocabulary")]
    return out


def build_shards(tokenizer: WhisperTokenizer, n_vocab: int, languages: Sequence[str] = SHARD_LANGUAGES,
                 n_words: int = DEFAULT_WORDS, sentences: Mapping[str, Sequence[str]] | None = None,
                 use_project_texts: bool = True, cases: Sequence[str] = CASES) -> VocabularyShards:
    """Shards from wordfreq's top ``n_words`` words (0: none) plus sentences (the project's and/or given)."""
    shards = {}
    for lang in languages:
        _check_language(lang)
        sents = list((sentences or {}).get(lang, ()))
        if use_project_texts:
            sents += project_sentences(lang)
        words = wordfreq_words(lang, n_words) if n_words else []
        shards[lang] = build_shard(tokenizer, n_vocab, words, sents, cases)
    sources = {"wordfreq_words": n_words, "project_texts": use_project_texts, "cases": list(cases)}
    if n_words:
        from importlib.metadata import version

        sources["wordfreq"] = version("wordfreq")
    return VocabularyShards(shards, n_vocab, tokenizer_fingerprint(tokenizer), sources)
