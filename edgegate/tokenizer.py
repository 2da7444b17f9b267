"""Whisper's tokenizer through the ``tokenizers`` package (no torch; the runtime uses it too)."""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from edgegate.errors import EdgegateError, ModelError

# Whisper's language codes in token order, with names for messages (openai/whisper tokenizer.py).
LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian",
    "kn": "kannada", "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque",
    "is": "icelandic", "hy": "armenian", "ne": "nepali", "mn": "mongolian", "bs": "bosnian",
    "kk": "kazakh", "sq": "albanian", "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi",
    "si": "sinhala", "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans",
    "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese", "ht": "haitian creole",
    "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese", "sa": "sanskrit",
    "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog", "mg": "malagasy",
    "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa", "ba": "bashkir",
    "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}
TASKS = ("transcribe", "translate")


@lru_cache(maxsize=1)
def byte_chars() -> tuple[str, ...]:
    """The printable character byte-level BPE uses for each byte value (GPT-2's reversible map)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {}
    extra = 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def restore_missing_merges(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the BPE merges its vocabulary implies but its merge list lacks, restored.

    The whisper-base ``tokenizer.json`` shipped with the CTranslate2 weights lacks GPT-2's first merge
    ("Ġ t"; 49,999 merges for 50,000), so it encodes " the" as "Ġ" + "the" where Whisper emits " the"
    (openai-whisper's tiktoken agrees), and prompts and prefixes reach the model as token sequences it
    never saw. A two-byte token of the vocabulary that no merge makes is restored at the front (rank 0,
    where GPT-2 has "Ġ t"). Decoding never needed merges, so only encoding changes.
    """
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model", {})
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges:
        return tokenizer
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    made = {a + b for a, b in pairs}
    base = set(byte_chars())
    missing = [t for t in model["vocab"] if len(t) == 2 and t not in made and t[0] in base and t[1] in base]
    if not missing:
        return tokenizer
    fixed = [f"{t[0]} {t[1]}" if isinstance(merges[0], str) else [t[0], t[1]] for t in missing]
    model["merges"] = fixed + list(merges)
    return Tokenizer.from_str(json.dumps(spec))


class WhisperTokenizer:
    """Text <-> token ids plus Whisper's special tokens, read from a ``tokenizer.json``."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = restore_missing_merges(tokenizer)
        ids = {name: tokenizer.token_to_id(f"<|{name}|>") for name in (
            "endoftext", "startoftranscript", "translate", "transcribe", "startoflm", "startofprev",
            "notimestamps")}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ModelError(f"tokenizer lacks Whisper special tokens {missing}; is this a Whisper tokenizer.json?")
        self.eot = ids["endoftext"]
        self.sot = ids["startoftranscript"]
        self.translate = ids["translate"]
        self.transcribe = ids["transcribe"]
        self.sot_lm = ids["startoflm"]
        self.sot_prev = ids["startofprev"]
        self.no_timestamps = ids["notimestamps"]
        self.no_speech = tokenizer.token_to_id("<|nospeech|>") or tokenizer.token_to_id("<|nocaptions|>")
        self.timestamp_begin = self.no_timestamps + 1
        # Language tokens sit between <|startoftranscript|> and <|translate|>.
        self.language_codes = [c for c in LANGUAGES if tokenizer.token_to_id(f"<|{c}|>") is not None]
        self.language_tokens = [tokenizer.token_to_id(f"<|{c}|>") for c in self.language_codes]

    @classmethod
    def from_file(cls, path: str | Path) -> WhisperTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises its own exception type
            if isinstance(exc, EdgegateError):
                raise
            raise ModelError(f"cannot read tokenizer {path}: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        return self._tok.decode([t for t in tokens if t < self.eot])

    def normalize_language(self, language: str) -> str:
        """Accept a code ('de') or a name ('German'); raise listing the valid codes otherwise."""
        key = language.strip().lower()
        if key in self.language_codes:
            return key
        by_name = {LANGUAGES[c]: c for c in self.language_codes}
        if key in by_name:
            return by_name[key]
        raise EdgegateError(f"unknown language {language!r}; valid codes: {', '.join(self.language_codes)}")

    def language_token(self, language: str) -> int:
        return self.language_tokens[self.language_codes.index(self.normalize_language(language))]

    def sot_sequence(self, language: str, task: str = "transcribe", timestamps: bool = False) -> list[int]:
        if task not in TASKS:
            raise EdgegateError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
        seq = [self.sot, self.language_token(language), self.transcribe if task == "transcribe" else self.translate]
        return seq if timestamps else seq + [self.no_timestamps]

    @cached_property
    def non_speech_tokens(self) -> list[int]:
        """Tokens of symbols that are not speech, as in openai/whisper (suppress_tokens='-1')."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        misc = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(misc):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in misc:
                    result.add(tokens[0])
        return sorted(result)

    def suppress_tokens(self) -> list[int]:
        """Never sampled: non-speech symbols and the control tokens."""
        extra = [self.transcribe, self.translate, self.sot, self.sot_prev, self.sot_lm, self.no_timestamps]
        if self.no_speech is not None:
            extra.append(self.no_speech)
        return sorted(set(self.non_speech_tokens) | set(extra))

    def suppress_at_begin(self) -> list[int]:
        """Blank and end-of-text may not be the first sampled token."""
        return [*self.encode(" "), self.eot]
