"""Offline text sources for the synthetic corpus, per language.

- **Fortunes** (Debian ``fortunes-de``, ``fortunes-es``, ``fortunes-it``, ``fortunes-min`` for
  English): real sentences, split from the fortune cookies, attributions stripped, kept when
  they are one clean sentence of 4-16 words. French has no fortunes package.
- **Templates**: a few dozen hand-written sentence templates per language, each with its English
  translation, filled from ``num2words`` (numbers, years, ordinals) and ``babel`` (CLDR month,
  weekday and country names). Because every slot is rendered in both languages, each filled
  template is a *parallel pair* (sentence in L, English reference) for the translate task; its
  source side also serves as transcribe text (the only source for French).

Everything is deterministic for a given seed (``random.Random`` seeded with a string).
"""

from __future__ import annotations

import functools
import os
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgegate.data.manifest import DataError
from edgegate.data.templates import _COUNTRIES, _FR_MASCULINE, _NAMES, _NOUN_COL, _NOUNS, TEMPLATES

LANGUAGES = ("en", "de", "es", "fr", "it")
LANGUAGE_NAMES = {"en": "English", "de": "German", "es": "Spanish", "fr": "French", "it": "Italian"}
SOURCES = ("fortunes", "templates")

# Where Debian installs the fortunes; EDGEGATE_FORTUNES_DIR overrides (tests, other distros).
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_PACKAGES = {"en": "fortunes-min", "de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it"}
_MIN_WORDS, _MAX_WORDS = 4, 16
# Share of transcribe sentences drawn from fortunes when a language has them.
FORTUNE_SHARE = 0.6


class TextSourceError(DataError):
    """A text source is missing, empty or cannot serve the request."""


@dataclass(frozen=True)
class TextItem:
    """One sentence to speak. ``reference`` is its English translation (= ``text`` for English)."""

    text: str
    lang: str
    reference: str
    source: str  # "fortunes:de/zitate", "template:de:12", "file:/path"


def check_language(lang: str) -> str:
    if lang not in LANGUAGES:
        raise TextSourceError(f"unknown language {lang!r}; supported: {', '.join(LANGUAGES)}")
    return lang


# ----------------------------------------------------------------------------------------------
# Fortunes
# ----------------------------------------------------------------------------------------------

_LETTERS = {
    "en": "",
    "de": "äöüßÄÖÜ",
    "es": "áéíóúüñÁÉÍÓÚÜÑ",
    "it": "àèéìíòóùúÀÈÉÌÒÓÙ",
    "fr": "àâæçéèêëîïôœùûüÿÀÂÆÇÉÈÊËÎÏÔŒÙÛÜŸ",
}
_SKIP_FILES = {"asciiart", "banner", "channel-debian.fortunes"}
_IT_GRAVE = {"a": "à", "e": "è", "i": "ì", "o": "ò", "u": "ù", "A": "À", "E": "È", "I": "Ì", "O": "Ò",
             "U": "Ù"}
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[¿¡]?[A-ZÄÖÜÀ-ÝŒ])")


def fortunes_dir() -> Path:
    return Path(os.environ.get("EDGEGATE_FORTUNES_DIR", str(FORTUNES_DIR)))


def _fortune_files(lang: str, root: Path) -> list[Path]:
    if lang == "en":  # fortunes-min installs these three at the top level
        files = [root / n for n in ("fortunes", "literature", "riddles")]
    elif lang == "es":
        files = sorted((root / "es").glob("*.fortunes"))  # es/off/ (offensive) is left out
    elif lang in ("de", "it"):
        d = root / lang
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink()
                       and p.suffix not in (".dat", ".u8")) if d.is_dir() else []
    else:
        return []
    return [p for p in files if p.is_file() and p.name not in _SKIP_FILES]


def _italian_accents(s: str) -> str:
    """Old Italian fortunes write accents as apostrophes: ``perche'`` -> ``perché``, ``e'`` -> ``è``."""
    def repl(m: re.Match) -> str:
        word, vowel = m.group(1), m.group(2)
        if (word + vowel).lower() == "po":  # "un po'" is a real apostrophe
            return m.group(0)
        if word.lower().endswith("ch") and vowel in "eE":
            return word + ("é" if vowel == "e" else "É")
        return word + _IT_GRAVE[vowel]
    return re.sub(r"\b([A-Za-z]*)([aeiouAEIOU])'(?=[\s.,;:!?]|$)", repl, s)


def _clean_fortune_sentences(entry: str, lang: str) -> list[str]:
    if any(ord(c) < 32 and c not in "\n\t" for c in entry):  # overstriking, escapes
        return []
    lines = []
    for line in entry.splitlines():
        if re.match(r"^\s*(--|—)", line):  # attribution line: stop here
            break
        lines.append(line.split(" -- ")[0] if " -- " in line else line)
    text = " ".join(" ".join(lines).split())
    if lang == "it":
        text = _italian_accents(text)
    text = unicodedata.normalize("NFC", text)
    allowed = set(_LETTERS[lang])
    out = []
    for sent in _SENTENCE_SPLIT.split(text):
        sent = sent.strip()
        if not sent or sent[-1] not in ".!?" or sent.endswith("..."):
            continue
        if not re.match(r"^[¿¡]?[A-ZÄÖÜÀ-ÝŒ]", sent):
            continue
        if re.search(r"[0-9\"“”„«»()\[\]{}<>/\\|@#$%^&*_=+~:`\t]|--|\u2026|\ufffd", sent):
            continue
        if re.search(r"[A-ZÄÖÜ]{2,}", sent):  # acronyms and shouting read badly
            continue
        if re.search(r"(^|\s)[-–—]\s|\b[A-ZÄÖÜ]\.", sent):  # dialogue dashes, initials
            continue
        if any(c.isalpha() and not (c.isascii() or c in allowed) for c in sent):
            continue  # letters foreign to this language
        n_words = len(sent.split())
        if _MIN_WORDS <= n_words <= _MAX_WORDS:
            out.append(sent)
    return out


@functools.lru_cache(maxsize=16)
def _fortune_sentences_cached(lang: str, root: str) -> tuple[tuple[str, str], ...]:
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for path in _fortune_files(lang, Path(root)):
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", raw, flags=re.M):
            for sent in _clean_fortune_sentences(entry, lang):
                if sent not in seen:
                    seen.add(sent)
                    out.append((sent, f"fortunes:{path.relative_to(root).as_posix()}"))
    return tuple(out)


def fortune_sentences(lang: str, root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Clean single sentences from the language's Debian fortunes package: ``[(sentence, source)]``.

    Raises ``TextSourceError`` naming the apt package when it is not installed.
    """
    check_language(lang)
    if lang not in FORTUNE_PACKAGES:
        raise TextSourceError(f"no fortunes package exists for {LANGUAGE_NAMES[lang]} ({lang}); "
                              "use the template source for it")
    base = Path(root) if root is not None else fortunes_dir()
    if not _fortune_files(lang, base):
        raise TextSourceError(f"{LANGUAGE_NAMES[lang]} fortunes not found under {base}: "
                              f"apt-get install {FORTUNE_PACKAGES[lang]} (or use --text-source templates)")
    out = list(_fortune_sentences_cached(lang, str(base)))
    if not out:
        raise TextSourceError(f"{LANGUAGE_NAMES[lang]} fortunes under {base} gave no usable sentence; "
                              f"reinstall {FORTUNE_PACKAGES[lang]} or use --text-source templates")
    return out


def has_fortunes(lang: str, root: str | os.PathLike | None = None) -> bool:
    base = Path(root) if root is not None else fortunes_dir()
    return lang in FORTUNE_PACKAGES and bool(_fortune_files(lang, base))


# ----------------------------------------------------------------------------------------------
# Numbers, dates and names (num2words + babel): every phrase rendered in L and in English
# ----------------------------------------------------------------------------------------------

def _num2words(n: int, lang: str, to: str = "cardinal") -> str:
    try:
        from num2words import num2words
    except ImportError as exc:
        raise TextSourceError("num2words is not installed: pip install num2words") from exc
    return num2words(n, lang=lang, to=to)


@functools.lru_cache(maxsize=8)
def _locale(lang: str):
    try:
        from babel import Locale
    except ImportError as exc:
        raise TextSourceError("babel is not installed: pip install babel") from exc
    return Locale.parse(lang)


def number_words(n: int, lang: str) -> str:
    """A cardinal number in words (``num2words``)."""
    return _num2words(n, check_language(lang))


def month_name(month: int, lang: str) -> str:
    """CLDR month name, 1 = January (``babel``)."""
    return _locale(check_language(lang)).months["format"]["wide"][month]


def day_name(day: int, lang: str) -> str:
    """CLDR weekday name, 0 = Monday (``babel``)."""
    return _locale(check_language(lang)).days["format"]["wide"][day]


def country_name(code: str, lang: str) -> str:
    """CLDR territory name for an ISO code (``babel``)."""
    return _locale(check_language(lang)).territories[code]


def _count_number(rng: random.Random, lo: int, hi: int) -> int:
    """A number in [lo, hi] avoiding units of one (gender agreement: un/una/une, veintiún...)."""
    while True:
        n = rng.randint(lo, hi)
        if n % 10 != 1 or n % 100 == 11:
            return n


def _cardinal(n: int, lang: str, feminine: bool = False) -> str:
    words = _num2words(n, lang)
    if lang == "es" and feminine:  # doscientas manzanas
        words = re.sub(r"ientos\b", "ientas", words)
    return words


def _ordinal_date(day: int, month: int, lang: str) -> str:
    """'on the third of March' and its equivalents, article/preposition included."""
    m = month_name(month, lang)
    if lang == "en":
        return f"on the {_num2words(day, 'en', 'ordinal')} of {m}"
    if lang == "de":
        return f"am {_num2words(day, 'de', 'ordinal')}n {m}"
    if lang == "es":
        return f"el {'primero' if day == 1 else _num2words(day, 'es')} de {m}"
    if lang == "fr":
        return f"le {'premier' if day == 1 else _num2words(day, 'fr')} {m}"
    # it
    if day == 1:
        return f"il primo {m}"
    words = _num2words(day, "it")
    return f"l'{words} {m}" if words[0] in "aeiou" else f"il {words} {m}"


def _in_month(month: int, lang: str) -> str:
    m = month_name(month, lang)
    return {"en": f"in {m}", "de": f"im {m}", "es": f"en {m}", "fr": f"en {m}",
            "it": f"ad {m}" if m[0] in "aeiou" else f"a {m}"}[lang]


def _on_day(day: int, lang: str) -> str:
    d = day_name(day, lang)
    return {"en": f"on {d}", "de": f"am {d}", "es": f"el {d}", "fr": d, "it": d}[lang]


def _at_hour(hour: int, lang: str) -> str:
    w = _num2words(hour, lang)
    return {"en": f"at {w} o'clock", "de": f"um {w} Uhr", "es": f"a las {w}", "fr": f"à {w} heures",
            "it": f"alle {w}"}[lang]


def _country_phrase(code: str, lang: str, kind: str) -> str:
    c = country_name(code, lang)
    if kind == "country":
        return c
    if lang == "fr":
        masc = code in _FR_MASCULINE
        if kind in ("in", "to"):
            return f"{'au' if masc else 'en'} {c}"
        return f"du {c}" if masc else (f"d'{c}" if c[0] in "AEIOUÉ" else f"de {c}")
    table = {
        "en": {"in": "in", "to": "to", "from": "from"},
        "de": {"in": "in", "to": "nach", "from": "aus"},
        "es": {"in": "en", "to": "a", "from": "de"},
        "it": {"in": "in", "to": "in"},
    }[lang]
    if kind not in table:
        raise TextSourceError(f"internal: no '{kind}' country phrase for {lang}")
    return f"{table[kind]} {c}"


@functools.lru_cache(maxsize=1)
def _english_templates() -> tuple[str, ...]:
    """English transcribe templates: the English sides of all templates, deduplicated, in order."""
    seen: dict[str, None] = {}
    for lang in ("de", "es", "fr", "it"):
        for _, en in TEMPLATES[lang]:
            seen.setdefault(en, None)
    return tuple(seen)


_SLOT = re.compile(r"\{(g:[^}|]*\|[^}]*|[a-z_0-9]+)\}")


def _capitalize(s: str) -> str:
    for i, c in enumerate(s):
        if c.isalpha():
            return s[:i] + c.upper() + s[i + 1:]
    return s


def _draw_values(rng: random.Random) -> dict:
    """Language-independent choices for every slot (rendered per language later)."""
    noun = rng.choice(_NOUNS)
    n1, n2 = rng.sample(_NAMES, 2)
    return {
        "count": (_count_number(rng, 2, 999), noun),
        "num": _count_number(rng, 2, 999),
        "small": _count_number(rng, 2, 99),
        "year": rng.randint(1950, 2030),
        "name": n1,
        "name2": n2,
        "day": rng.randrange(7),
        "month": rng.randint(1, 12),
        "date": (rng.randint(1, 28), rng.randint(1, 12)),
        "hour": rng.randint(2, 11),
        "country": rng.choice(_COUNTRIES),
    }


def _render(template: str, values: dict, lang: str) -> str:
    def slot(m: re.Match) -> str:
        key = m.group(1)
        if key.startswith("g:"):
            masc, fem = key[2:].split("|", 1)
            return fem if values["name"][1] == "f" else masc
        if key == "count":
            n, noun = values["count"]
            return f"{_cardinal(n, lang, feminine=(lang == 'es' and noun[3] == 'f'))} {noun[_NOUN_COL[lang]]}"
        if key in ("num", "small"):
            return _cardinal(values[key], lang)
        if key == "year":
            return _num2words(values["year"], lang, "year")
        if key in ("name", "name2"):
            return values[key][0]
        if key == "day":
            return day_name(values["day"], lang)
        if key == "on_day":
            return _on_day(values["day"], lang)
        if key == "in_month":
            return _in_month(values["month"], lang)
        if key == "on_date":
            return _ordinal_date(*values["date"], lang)
        if key == "at_hour":
            return _at_hour(values["hour"], lang)
        if key == "country":
            return _country_phrase(values["country"], lang, "country")
        if key in ("in_country", "to_country", "from_country"):
            return _country_phrase(values["country"], lang, key.split("_")[0])
        raise TextSourceError(f"internal: unknown template slot {{{key}}}")
    return _capitalize(_SLOT.sub(slot, template))


def _distinct(gen, n: int, what: str) -> list:
    """Draw from ``gen()`` until ``n`` distinct items (by text) or the source looks exhausted."""
    out, seen, misses = [], set(), 0
    while len(out) < n:
        item = gen()
        if item.text in seen:
            misses += 1
            if misses > 1000 + 20 * n:
                raise TextSourceError(f"{what}: only {len(out)} distinct sentences available, "
                                      f"{n} asked for; ask for fewer per language")
            continue
        seen.add(item.text)
        out.append(item)
    return out


def template_pairs(lang: str, n: int, seed: int | str = 0, stream: str = "pairs") -> list[TextItem]:
    """``n`` distinct parallel pairs ``TextItem(text in lang, reference in English)``.

    For English the "pair" is an English sentence with itself as reference. ``stream`` names an
    independent random stream (the corpus uses one per task).
    """
    check_language(lang)
    rng = random.Random(f"edgegate-templates:{seed}:{lang}:{stream}")

    def gen() -> TextItem:
        values = _draw_values(rng)
        if lang == "en":
            templates = _english_templates()
            i = rng.randrange(len(templates))
            text = _render(templates[i], values, "en")
            return TextItem(text=text, lang="en", reference=text, source=f"template:en:{i}")
        i = rng.randrange(len(TEMPLATES[lang]))
        src, en = TEMPLATES[lang][i]
        return TextItem(text=_render(src, values, lang), lang=lang, reference=_render(en, values, "en"),
                        source=f"template:{lang}:{i}")

    return _distinct(gen, n, f"{LANGUAGE_NAMES[lang]} templates")


def translation_pairs(lang: str, n: int, seed: int | str = 0) -> list[TextItem]:
    """``n`` distinct (sentence in ``lang``, English reference) pairs for the translate task."""
    if check_language(lang) == "en":
        raise TextSourceError("translate is to English: pick a non-English language for it")
    return template_pairs(lang, n, seed, stream="translate")


def read_text_file(path: str | os.PathLike, lang: str) -> list[str]:
    """Sentences from a user's UTF-8 text file, one per line (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    if not p.is_file():
        raise TextSourceError(f"text file for {lang} not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TextSourceError(f"text file {p} is not UTF-8; save it as UTF-8") from exc
    out = [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise TextSourceError(f"text file {p} for {lang} has no sentences; put one sentence per line")
    return out


def transcribe_texts(lang: str, n: int, seed: int | str = 0, sources: Sequence[str] = SOURCES,
                     text_file: str | os.PathLike | None = None) -> list[TextItem]:
    """``n`` sentences to speak for the transcribe task (``reference`` = ``text``).

    With ``text_file`` only that file is used. Otherwise ``sources`` picks fortunes and/or
    templates; fortunes are used only for languages that have a package (not French), for a
    share of ``FORTUNE_SHARE`` of the items, without repeats while enough sentences exist.
    """
    check_language(lang)
    rng = random.Random(f"edgegate-transcribe:{seed}:{lang}")
    if text_file is not None:
        lines = read_text_file(text_file, lang)
        order = rng.sample(range(len(lines)), len(lines))
        picks = [order[i % len(order)] for i in range(n)]
        return [TextItem(lines[i], lang, lines[i], f"file:{Path(text_file).name}:{i + 1}") for i in picks]
    bad = [s for s in sources if s not in SOURCES]
    if bad or not sources:
        raise TextSourceError(f"unknown text source {','.join(bad) or '(none)'}; use {', '.join(SOURCES)}")
    use_fortunes = "fortunes" in sources and lang in FORTUNE_PACKAGES
    use_templates = "templates" in sources
    if not use_fortunes and not use_templates:
        raise TextSourceError(f"{LANGUAGE_NAMES[lang]} has no fortunes package: "
                              "use the template source (--text-source templates or all)")
    fortunes = fortune_sentences(lang) if use_fortunes else []
    if use_fortunes and use_templates:
        n_fort = sum(rng.random() < FORTUNE_SHARE for _ in range(n))
    else:
        n_fort = n if use_fortunes else 0
    n_fort = min(n_fort, len(fortunes)) if use_templates else n_fort
    if n_fort > len(fortunes):
        raise TextSourceError(f"{LANGUAGE_NAMES[lang]} fortunes have {len(fortunes)} sentences, "
                              f"{n} asked for; add the template source or ask for fewer")
    items = [TextItem(s, lang, s, src) for s, src in rng.sample(fortunes, n_fort)]
    if n - n_fort:
        items += [TextItem(t.text, lang, t.text, t.source)
                  for t in template_pairs(lang, n - n_fort, seed, stream="transcribe")]
    rng.shuffle(items)
    return items
