"""OWSM's token list and special tokens (no torch; decoding text needs no sentencepiece either).

ESPnet's token list for OWSM is ``<blank>``, ``<unk>``, the sentencepiece model's pieces without its
own ``<unk> <s> </s>`` (the special tokens are user symbols of that model: ``<na>``, ``<nospeech>``,
languages ``<abk>``..``<zul>``, tasks ``<asr>`` and ``<st_xxx>``, ``<notimestamps>``, ``<0.00>``..
``<30.00>``), then ``<sos>``, ``<eos>``, ``<sop>``. Text -> pieces uses the sentencepiece model
(imported only then); ids -> text joins the pieces, as sentencepiece's ``DecodePieces`` does.

It offers what ``edgegate.decoding`` asks of a Whisper tokenizer (``sot``, ``eot``, ``language_tokens``,
``language_codes``, ``normalize_language``, ``sot_sequence``, ``suppress_tokens``, ...), so the project's
greedy/beam search and language identification run OWSM unchanged, with ESPnet's token rules: with
``<notimestamps>`` in the prompt only the timestamp tokens are banned (ESPnet's ScoreFilter), nothing
else is suppressed, and there is no no-speech probability (OWSM has no Whisper-style one).
"""

from __future__ import annotations

import re
from pathlib import Path

from edgegate.errors import EdgegateError, ModelError
from edgegate.tokenizer import LANGUAGES

# Whisper's language codes (what the rest of edgegate speaks) -> the ISO 639-3 codes OWSM's tokens use.
ISO639_3 = dict(zip(LANGUAGES, (
    "eng zho deu spa rus kor fra jpn por tur pol cat nld ara swe ita ind hin fin vie heb ukr ell msa ces ron "
    "dan hun tam nor tha urd hrv bul lit lat mri mal cym slk tel fas lav ben srp aze slv kan est mkd bre eus "
    "isl hye nep mon bos kaz sqi swa glg mar pan sin khm sna yor som afr oci kat bel tgk snd guj amh yid lao "
    "uzb fao hat pus tuk nno mlt san ltz mya bod tgl mlg asm tat haw lin hau bak jav sun yue").split(), strict=True))
_NOT_LANGUAGES = {"<blank>", "<unk>", "<na>", "<asr>", "<sos>", "<eos>", "<sop>"}
_LANGUAGE = re.compile(r"^<([a-z]{3})>$")
WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"


def is_special(piece: str) -> bool:
    """ESPnet's rule for text without special tokens: pieces written ``<...>``."""
    return len(piece) > 1 and piece[0] == "<" and piece[-1] == ">"


class OwsmTokenizer:
    def __init__(self, token_list: list[str], bpe_model: str | Path | None = None,
                 notime_symbol: str = "<notimestamps>", first_time_symbol: str = "<0.00>",
                 last_time_symbol: str = "<30.00>"):
        self.token_list = list(token_list)
        self.token_to_id = {t: i for i, t in enumerate(self.token_list)}
        if len(self.token_to_id) != len(self.token_list):
            raise ModelError("OWSM token list has duplicate tokens")
        self.bpe_model = None if bpe_model is None else Path(bpe_model)
        self._sp = None
        needed = ["<blank>", "<unk>", "<na>", "<sos>", "<eos>", "<sop>", "<asr>", notime_symbol,
                  first_time_symbol, last_time_symbol]
        missing = [t for t in needed if t not in self.token_to_id]
        if missing:
            raise ModelError(f"OWSM token list lacks special tokens {missing}; is this an OWSM tokens.txt?")
        ids = self.token_to_id
        self.blank, self.unk, self.na = ids["<blank>"], ids["<unk>"], ids["<na>"]
        self.sot, self.eot, self.sop = ids["<sos>"], ids["<eos>"], ids["<sop>"]
        self.no_timestamps = ids[notime_symbol]
        self.first_time, self.last_time = ids[first_time_symbol], ids[last_time_symbol]
        self.language_codes = [m.group(1) for t in self.token_list
                               if t not in _NOT_LANGUAGES and (m := _LANGUAGE.match(t))]
        self.language_tokens = [ids[f"<{c}>"] for c in self.language_codes]
        if not self.language_codes:
            raise ModelError("OWSM token list has no language tokens (<eng>, <deu>, ...)")
        # What edgegate.decoding reads of a Whisper tokenizer. OWSM's timestamps sit inside the vocabulary,
        # not at its end, so none start "after" it: they are suppressed by id instead (suppress_tokens).
        self.timestamp_begin = len(self.token_list)
        self.sot_prev = self.sop
        self.no_speech = None

    @classmethod
    def from_files(cls, tokens_txt: str | Path, bpe_model: str | Path | None = None) -> OwsmTokenizer:
        try:
            lines = Path(tokens_txt).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelError(f"cannot read OWSM token list {tokens_txt}: {exc.strerror}") from exc
        return cls([line.rstrip() for line in lines if line.strip()], bpe_model)

    # -- text ------------------------------------------------------------------------------
    def pieces(self, text: str) -> list[str]:
        if self._sp is None:
            if self.bpe_model is None:
                raise ModelError("this OWSM tokenizer has no bpe.model: encoding text needs it")
            try:
                import sentencepiece
            except ImportError as exc:
                raise ModelError("encoding text for OWSM needs sentencepiece: pip install sentencepiece") from exc
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.bpe_model))
        return self._sp.encode(text, out_type=str)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids; pieces not in the list map to ``<unk>`` (ESPnet's TokenIDConverter)."""
        return [self.token_to_id.get(p, self.unk) for p in self.pieces(text)]

    def decode(self, tokens: list[int]) -> str:
        """Token ids -> text, special tokens (``<...>``) left out."""
        pieces = [self.token_list[t] for t in tokens if 0 <= t < len(self.token_list)]
        text = "".join(p for p in pieces if not is_special(p))
        return text.replace(WORD_BOUNDARY, " ").strip()

    # -- prompt ----------------------------------------------------------------------------
    def normalize_language(self, language: str) -> str:
        """Accept OWSM's code ('eng', '<eng>'), a Whisper code ('en') or a name ('English')."""
        key = language.strip().lower().strip("<>")
        if key in self.language_codes:
            return key
        by_name = {name: code for code, name in LANGUAGES.items()}
        whisper = by_name.get(key, key)
        if ISO639_3.get(whisper) in self.language_codes:
            return ISO639_3[whisper]
        raise EdgegateError(f"unknown language {language!r} for this OWSM model; valid codes: "
                            f"{', '.join(self.language_codes)}")

    def language_token(self, language: str) -> int:
        return self.token_to_id[f"<{self.normalize_language(language)}>"]

    def task_token(self, task: str, language: str | None = None) -> int:
        """'transcribe' -> <asr>, 'translate' -> <st_eng> (into English, as Whisper's), or a task token name."""
        name = {"transcribe": "asr", "translate": "st_eng"}.get(task, task.strip("<>"))
        if f"<{name}>" not in self.token_to_id:
            tasks = sorted(t for t in self.token_list if t == "<asr>" or t.startswith("<st_"))
            raise EdgegateError(f"unknown task {task!r} for this OWSM model; use transcribe, translate or one of "
                                f"{', '.join(tasks)}")
        return self.token_to_id[f"<{name}>"]

    def sot_sequence(self, language: str, task: str = "transcribe", timestamps: bool = False) -> list[int]:
        """OWSM's prompt ``<sos> <lang> <task> <notimestamps>``."""
        seq = [self.sot, self.language_token(language), self.task_token(task)]
        return seq if timestamps else seq + [self.no_timestamps]

    def suppress_tokens(self) -> list[int]:
        """Never chosen with ``<notimestamps>``: the timestamp tokens (ESPnet's ScoreFilter)."""
        return list(range(self.first_time, self.last_time + 1))

    def suppress_at_begin(self) -> list[int]:
        """ESPnet suppresses nothing at the first step (Whisper bans blank and end-of-text there)."""
        return []
