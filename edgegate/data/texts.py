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


# Countries that take no article in German and Italian after "in"; the French preposition
# ("au" for masculine, else "en") is given explicitly.
_COUNTRIES = ("FR", "ES", "IT", "DE", "AT", "PL", "SE", "NO", "DK", "FI", "GR", "PT", "IE", "JP", "CN",
              "IN", "RU", "BR", "CA", "MX", "AR", "AU", "EG", "HR", "HU", "BE")
_FR_MASCULINE = {"JP", "PT", "BR", "CA", "MX", "DK"}

# (English plural, German, Spanish, Spanish gender, French, Italian) - countable objects.
_NOUNS = (
    ("apples", "Äpfel", "manzanas", "f", "pommes", "mele"),
    ("books", "Bücher", "libros", "m", "livres", "libri"),
    ("chairs", "Stühle", "sillas", "f", "chaises", "sedie"),
    ("letters", "Briefe", "cartas", "f", "lettres", "lettere"),
    ("bottles", "Flaschen", "botellas", "f", "bouteilles", "bottiglie"),
    ("tickets", "Fahrkarten", "billetes", "m", "billets", "biglietti"),
    ("keys", "Schlüssel", "llaves", "f", "clés", "chiavi"),
    ("flowers", "Blumen", "flores", "f", "fleurs", "fiori"),
    ("cups", "Tassen", "tazas", "f", "tasses", "tazze"),
    ("pens", "Stifte", "bolígrafos", "m", "stylos", "penne"),
    ("plates", "Teller", "platos", "m", "assiettes", "piatti"),
    ("eggs", "Eier", "huevos", "m", "œufs", "uova"),
    ("oranges", "Orangen", "naranjas", "f", "oranges", "arance"),
    ("newspapers", "Zeitungen", "periódicos", "m", "journaux", "giornali"),
    ("candles", "Kerzen", "velas", "f", "bougies", "candele"),
    ("shirts", "Hemden", "camisas", "f", "chemises", "camicie"),
    ("glasses", "Gläser", "vasos", "m", "verres", "bicchieri"),
    ("boxes", "Kisten", "cajas", "f", "boîtes", "scatole"),
)
_NOUN_COL = {"en": 0, "de": 1, "es": 2, "fr": 4, "it": 5}

# First names that read acceptably in all five languages (gender for agreement).
_NAMES = (
    ("Anna", "f"), ("Maria", "f"), ("Laura", "f"), ("Sofia", "f"), ("Elena", "f"), ("Julia", "f"),
    ("Clara", "f"), ("Eva", "f"), ("Nina", "f"), ("Paula", "f"), ("Emma", "f"), ("Lisa", "f"),
    ("Paul", "m"), ("Peter", "m"), ("Thomas", "m"), ("Marco", "m"), ("David", "m"), ("Lucas", "m"),
    ("Martin", "m"), ("Daniel", "m"), ("Hugo", "m"), ("Leo", "m"), ("Oscar", "m"), ("Carlos", "m"),
)


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


# ----------------------------------------------------------------------------------------------
# Templates: (sentence in L, English translation). Slots:
#   {count} number + noun   {num} 2..999   {small} 2..99   {year} 1950..2030
#   {name} {name2}          {day} weekday  {on_day}        {in_month}  {on_date}  {at_hour}
#   {country} {in_country} {to_country} {from_country}     {g:masc|fem} agrees with {name}
# ----------------------------------------------------------------------------------------------

TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "de": (
        ("Ich habe {count}.", "I have {count}."),
        ("Wir brauchen noch {count}.", "We still need {count}."),
        ("Ich habe gestern {count} gekauft.", "I bought {count} yesterday."),
        ("{name} hat {count}.", "{name} has {count}."),
        ("In der Kiste sind {count}.", "There are {count} in the box."),
        ("{name} ist {small} Jahre alt.", "{name} is {small} years old."),
        ("Das kostet {num} Euro.", "That costs {num} euros."),
        ("Der Zug fährt {at_hour} ab.", "The train leaves {at_hour}."),
        ("Wir treffen uns {on_day} {at_hour}.", "We are meeting {on_day} {at_hour}."),
        ("Heute ist {day}.", "Today is {day}."),
        ("Mein Geburtstag ist {in_month}.", "My birthday is {in_month}."),
        ("{name} wohnt {in_country}.", "{name} lives {in_country}."),
        ("{name} kommt {from_country}.", "{name} comes {from_country}."),
        ("Nächstes Jahr fahren wir {to_country}.", "Next year we are going {to_country}."),
        ("{name} wurde {year} geboren.", "{name} was born in {year}."),
        ("{name} kommt {on_date} zurück.", "{name} is coming back {on_date}."),
        ("Ich habe {small} Minuten gewartet.", "I waited for {small} minutes."),
        ("Bis zur Stadt sind es noch {num} Kilometer.", "It is still {num} kilometres to the city."),
        ("{name} und {name2} arbeiten {in_country}.", "{name} and {name2} work {in_country}."),
        ("{in_month} ist es {in_country} oft kalt.", "{in_month} it is often cold {in_country}."),
        ("Das Konzert beginnt {on_date} {at_hour}.", "The concert starts {on_date} {at_hour}."),
        ("Unser Haus hat {small} Fenster.", "Our house has {small} windows."),
        ("{name} liest jeden Tag {small} Seiten.", "{name} reads {small} pages every day."),
        ("Die Schule hat {num} Schüler.", "The school has {num} pupils."),
        ("Ich rufe dich {on_day} an.", "I will call you {on_day}."),
        ("Der Laden ist {on_day} geschlossen.", "The shop is closed {on_day}."),
        ("{name} hat {on_date} Geburtstag.", "{name}'s birthday is {on_date}."),
        ("Wir fliegen {in_month} {to_country}.", "We are flying {to_country} {in_month}."),
        ("Im Garten stehen {num} Bäume.", "There are {num} trees in the garden."),
        ("Der Film dauert {small} Minuten.", "The film lasts {small} minutes."),
        ("{name} hat mir {count} geschenkt.", "{name} gave me {count}."),
        ("Kannst du mir {count} bringen?", "Can you bring me {count}?"),
        ("{name} hat {year} {in_country} gelebt.", "{name} lived {in_country} in {year}."),
        ("Am Wochenende fährt {name} {to_country}.", "At the weekend {name} is going {to_country}."),
    ),
    "es": (
        ("Tengo {count}.", "I have {count}."),
        ("Todavía necesitamos {count}.", "We still need {count}."),
        ("Ayer compré {count}.", "I bought {count} yesterday."),
        ("{name} tiene {count}.", "{name} has {count}."),
        ("En la caja hay {count}.", "There are {count} in the box."),
        ("{name} tiene {small} años.", "{name} is {small} years old."),
        ("Esto cuesta {num} euros.", "This costs {num} euros."),
        ("El tren sale {at_hour}.", "The train leaves {at_hour}."),
        ("Nos vemos {on_day} {at_hour}.", "See you {on_day} {at_hour}."),
        ("Hoy es {day}.", "Today is {day}."),
        ("Mi cumpleaños es {in_month}.", "My birthday is {in_month}."),
        ("{name} vive {in_country}.", "{name} lives {in_country}."),
        ("{name} es {from_country}.", "{name} is {from_country}."),
        ("El año que viene viajamos {to_country}.", "Next year we are travelling {to_country}."),
        ("{name} nació en {year}.", "{name} was born in {year}."),
        ("{name} vuelve {on_date}.", "{name} is coming back {on_date}."),
        ("Esperé {small} minutos.", "I waited for {small} minutes."),
        ("Faltan {num} kilómetros para llegar a la ciudad.", "It is {num} kilometres to the city."),
        ("{name} y {name2} trabajan {in_country}.", "{name} and {name2} work {in_country}."),
        ("{in_month} suele hacer frío {in_country}.", "{in_month} it is usually cold {in_country}."),
        ("El concierto empieza {on_date} {at_hour}.", "The concert starts {on_date} {at_hour}."),
        ("Nuestra casa tiene {small} ventanas.", "Our house has {small} windows."),
        ("{name} lee {small} páginas cada día.", "{name} reads {small} pages every day."),
        ("La escuela tiene {num} alumnos.", "The school has {num} pupils."),
        ("Te llamo {on_day}.", "I will call you {on_day}."),
        ("La tienda está cerrada {on_day}.", "The shop is closed {on_day}."),
        ("El cumpleaños de {name} es {on_date}.", "{name}'s birthday is {on_date}."),
        ("Volamos {to_country} {in_month}.", "We are flying {to_country} {in_month}."),
        ("En el jardín hay {num} árboles.", "There are {num} trees in the garden."),
        ("La película dura {small} minutos.", "The film lasts {small} minutes."),
        ("{name} me regaló {count}.", "{name} gave me {count}."),
        ("¿Puedes traerme {count}?", "Can you bring me {count}?"),
        ("{name} vivió {in_country} en {year}.", "{name} lived {in_country} in {year}."),
        ("El fin de semana {name} viaja {to_country}.", "At the weekend {name} is travelling {to_country}."),
    ),
    "fr": (
        ("J'ai {count}.", "I have {count}."),
        ("Il nous faut encore {count}.", "We still need {count}."),
        ("Hier, j'ai acheté {count}.", "I bought {count} yesterday."),
        ("{name} a {count}.", "{name} has {count}."),
        ("Il y a {count} dans la boîte.", "There are {count} in the box."),
        ("{name} a {small} ans.", "{name} is {small} years old."),
        ("Ça coûte {num} euros.", "That costs {num} euros."),
        ("Le train part {at_hour}.", "The train leaves {at_hour}."),
        ("On se voit {on_day} {at_hour}.", "See you {on_day} {at_hour}."),
        ("Aujourd'hui, c'est {day}.", "Today is {day}."),
        ("Mon anniversaire est {in_month}.", "My birthday is {in_month}."),
        ("{name} habite {in_country}.", "{name} lives {in_country}."),
        ("{name} vient {from_country}.", "{name} comes {from_country}."),
        ("L'année prochaine, nous allons {to_country}.", "Next year we are going {to_country}."),
        ("{name} est {g:né|née} en {year}.", "{name} was born in {year}."),
        ("{name} revient {on_date}.", "{name} is coming back {on_date}."),
        ("J'ai attendu {small} minutes.", "I waited for {small} minutes."),
        ("La ville est encore à {num} kilomètres.", "The city is still {num} kilometres away."),
        ("{name} et {name2} travaillent {in_country}.", "{name} and {name2} work {in_country}."),
        ("{in_month}, il fait souvent froid {in_country}.", "{in_month} it is often cold {in_country}."),
        ("Le concert commence {on_date} {at_hour}.", "The concert starts {on_date} {at_hour}."),
        ("Notre maison a {small} fenêtres.", "Our house has {small} windows."),
        ("{name} lit {small} pages par jour.", "{name} reads {small} pages a day."),
        ("L'école compte {num} élèves.", "The school has {num} pupils."),
        ("Je t'appelle {on_day}.", "I will call you {on_day}."),
        ("Le magasin est fermé {on_day}.", "The shop is closed {on_day}."),
        ("{name} fête son anniversaire {on_date}.", "{name} celebrates {g:his|her} birthday {on_date}."),
        ("Nous partons {to_country} {in_month}.", "We are going {to_country} {in_month}."),
        ("Il y a {num} arbres dans le jardin.", "There are {num} trees in the garden."),
        ("Le film dure {small} minutes.", "The film lasts {small} minutes."),
        ("{name} m'a offert {count}.", "{name} gave me {count}."),
        ("Tu peux m'apporter {count} ?", "Can you bring me {count}?"),
        ("En {year}, {name} habitait {in_country}.", "In {year}, {name} lived {in_country}."),
        ("Ce week-end, {name} part {to_country}.", "This weekend {name} is going {to_country}."),
    ),
    "it": (
        ("Ho {count}.", "I have {count}."),
        ("Ci servono ancora {count}.", "We still need {count}."),
        ("Ieri ho comprato {count}.", "I bought {count} yesterday."),
        ("{name} ha {count}.", "{name} has {count}."),
        ("Nella scatola ci sono {count}.", "There are {count} in the box."),
        ("{name} ha {small} anni.", "{name} is {small} years old."),
        ("Costa {num} euro.", "It costs {num} euros."),
        ("Il treno parte {at_hour}.", "The train leaves {at_hour}."),
        ("Ci vediamo {on_day} {at_hour}.", "See you {on_day} {at_hour}."),
        ("Oggi è {day}.", "Today is {day}."),
        ("Il mio compleanno è {in_month}.", "My birthday is {in_month}."),
        ("{name} vive {in_country}.", "{name} lives {in_country}."),
        ("{name} è {g:nato|nata} {in_country}.", "{name} was born {in_country}."),
        ("L'anno prossimo andiamo {to_country}.", "Next year we are going {to_country}."),
        ("{name} è {g:nato|nata} nel {year}.", "{name} was born in {year}."),
        ("{name} torna {on_date}.", "{name} is coming back {on_date}."),
        ("Ho aspettato {small} minuti.", "I waited for {small} minutes."),
        ("La città è ancora a {num} chilometri.", "The city is still {num} kilometres away."),
        ("{name} e {name2} lavorano {in_country}.", "{name} and {name2} work {in_country}."),
        ("{in_month} fa spesso freddo {in_country}.", "{in_month} it is often cold {in_country}."),
        ("Il concerto inizia {on_date} {at_hour}.", "The concert starts {on_date} {at_hour}."),
        ("La nostra casa ha {small} finestre.", "Our house has {small} windows."),
        ("{name} legge {small} pagine al giorno.", "{name} reads {small} pages a day."),
        ("La scuola ha {num} alunni.", "The school has {num} pupils."),
        ("Ti chiamo {on_day}.", "I will call you {on_day}."),
        ("Il negozio è chiuso {on_day}.", "The shop is closed {on_day}."),
        ("Il compleanno di {name} è {on_date}.", "{name}'s birthday is {on_date}."),
        ("Andiamo {to_country} {in_month}.", "We are going {to_country} {in_month}."),
        ("Nel giardino ci sono {num} alberi.", "There are {num} trees in the garden."),
        ("Il film dura {small} minuti.", "The film lasts {small} minutes."),
        ("{name} mi ha regalato {count}.", "{name} gave me {count}."),
        ("Puoi portarmi {count}?", "Can you bring me {count}?"),
        ("Nel {year} {name} viveva {in_country}.", "In {year} {name} lived {in_country}."),
        ("Questo fine settimana {name} va {to_country}.", "This weekend {name} is going {to_country}."),
    ),
}


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
