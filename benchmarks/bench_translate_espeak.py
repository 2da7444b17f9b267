"""Speech translation to English with edgegate on German and Spanish sentences synthesised by espeak-ng.

Each sentence is spoken by ``espeak-ng -v de|es``, converted with ``sox -D`` to 16-kHz mono (in a
temporary folder), then run through edgegate twice with the language given: ``task="translate"``
(the output must be English) and ``task="transcribe"`` (a sanity control: Whisper's German/Spanish
transcription of the same clip must FAIL the English check, or the check proves nothing).

The English check passes an output when all of these hold:
  * no German or Spanish function word (a small embedded list without words that are also English),
  * at most 2 % of its letters are non-ASCII (no umlauts, accents, ß, ñ),
  * at least 25 % of its words are common English words (a small embedded list).
BLEU (sacrebleu, two reference translations per sentence) is reported for the translations and, as
a contrast, for the untranslated transcriptions. As a yardstick (not a pass criterion), faster-whisper
runs the same weights (int8, greedy, temperature 0, no timestamps) on the same clips.

Exit status: 0 when every translation passes and every transcription fails the check; 1 when a
translation is not English; 3 when the sanity control fails (a transcription passes as English);
2 when espeak-ng or sox is missing.

    python benchmarks/bench_translate_espeak.py
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "translate_espeak.json"

# (language, source sentence, two English reference translations)
SENTENCES: list[tuple[str, str, tuple[str, str]]] = [
    ("de", "Das Wetter ist heute sehr schön.",
     ("The weather is very nice today.", "Today the weather is very beautiful.")),
    ("de", "Ich möchte eine Tasse Kaffee, bitte.",
     ("I would like a cup of coffee, please.", "I'd like a cup of coffee, please.")),
    ("de", "Wo ist der Bahnhof?",
     ("Where is the train station?", "Where is the station?")),
    ("de", "Mein Bruder wohnt seit zwei Jahren in Berlin.",
     ("My brother has been living in Berlin for two years.", "My brother has lived in Berlin for two years.")),
    ("es", "Buenos días, ¿cómo estás?",
     ("Good morning, how are you?", "Good day, how are you?")),
    ("es", "El libro está en la mesa.",
     ("The book is on the table.", "The book is on the table.")),
    ("es", "Me gusta mucho la música clásica.",
     ("I really like classical music.", "I like classical music a lot.")),
    ("es", "Mañana vamos a la playa con nuestros amigos.",
     ("Tomorrow we are going to the beach with our friends.", "Tomorrow we go to the beach with our friends.")),
]

# German and Spanish function/common words that are NOT also English words (so "die", "was", "will",
# "also", "in", "a", "me", "no", "he", "has", "son", "sin", "come", "con", "den", "hat", "gut", "hay",
# "yo", "mesa" are deliberately absent).
FOREIGN_WORDS = {
    "de": set("""der das ist und nicht ich ein eine einen einem einer dem des mit sich auf für von zum
        zur wir sie ihr sehr bitte heute wo wie aber oder auch noch nach bei aus mein meine meinen dein
        deine sind haben wird werden nur schon jetzt hier dort kein keine nein möchte möchten
        seit zwei drei wohnt wohne wetter schön tasse kaffee bahnhof bruder jahren jahre ja doch wenn
        dass weil über unter zwischen immer wieder heute morgen gestern""".split()),
    "es": set("""el la los las es está están estás estoy del que y en un una unos unas por para muy mi mis
        tu tus su sus nosotros vamos cómo como qué pero más mucho mucha gusta también hoy mañana
        buenos buenas días dia día libro música clásica playa nuestros nuestras amigos amigas
        él ella ellos ellas usted ustedes ser estar tengo tiene soy somos al lo le les nos
        donde dónde cuando porque sí bien gracias hola""".split()),
}

# Common English words (function words and a few everyday words).
ENGLISH_WORDS = set("""the a an and or but of to in on at for with from by about as into like through
    after over between out against during without before under around among is are was were be been
    being am have has had do does did will would shall should can could may might must i you he she it
    we they me him her us them my your his its our their this that these those what which who whom
    where when why how not no yes all any both each few more most other some such only own same so than
    too very just now here there then today tomorrow yesterday good morning day night please thank
    thanks like go going went come home time year years two three one weather nice beautiful cup
    coffee station train book table music classical beach friends friend brother living lived live
    really lot much many well""".split())

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def words_of(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def english_check(text: str) -> dict:
    """Is ``text`` English? Returns the verdict with the evidence (see the module docstring)."""
    words = words_of(text)
    letters = [c for c in text if c.isalpha()]
    non_ascii = sum(1 for c in letters if not c.isascii())
    foreign = sorted({w for w in words for lang in FOREIGN_WORDS if w in FOREIGN_WORDS[lang]})
    english = sum(1 for w in words if w in ENGLISH_WORDS)
    share = english / len(words) if words else 0.0
    non_ascii_share = non_ascii / len(letters) if letters else 0.0
    reasons = []
    if not words:
        reasons.append("no words")
    if foreign:
        reasons.append(f"foreign words: {', '.join(foreign)}")
    if non_ascii_share > 0.02:
        reasons.append(f"{100 * non_ascii_share:.0f}% non-ASCII letters")
    if words and share < 0.25:
        reasons.append(f"only {100 * share:.0f}% common English words")
    return {"english": not reasons, "reasons": reasons, "foreign_words": foreign,
            "english_word_share": share, "non_ascii_letter_share": non_ascii_share}


def synthesise(text: str, voice: str, folder: Path, name: str, rate: int) -> Path:
    raw, out = folder / f"{name}.raw.wav", folder / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def bleu(hyps: list[str], refs: list[tuple[str, str]]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs], [r[1] for r in refs]]).score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", default="whisper-base", help="edgegate model name (default whisper-base)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--beam-size", type=int, default=1, help="beam size (default 1: greedy)")
    parser.add_argument("--rate", type=int, default=150, help="espeak-ng words per minute (default 150)")
    parser.add_argument("--no-faster-whisper", action="store_true",
                        help="skip the yardstick: faster-whisper (same weights, int8, greedy) on the same clips")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)

    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        print(f"error: {' and '.join(missing)} not found; apt-get install espeak-ng sox", file=sys.stderr)
        return 2

    import sacrebleu
    import torch

    from edgegate.audio import load_audio
    from edgegate.transcriber import WhisperModel

    model = WhisperModel(args.model, threads=args.threads)
    fw = None
    if not args.no_faster_whisper:
        try:
            import faster_whisper

            from edgegate.models.registry import resolve_model

            fw = faster_whisper.WhisperModel(str(resolve_model(args.model)), device="cpu", compute_type="int8",
                                             cpu_threads=args.threads, num_workers=1)
        except ImportError:
            print("note: faster-whisper is not installed; no yardstick", file=sys.stderr)

    def fw_run(audio, lang: str, task: str) -> str:
        segments, _ = fw.transcribe(audio, language=lang, task=task, beam_size=args.beam_size, best_of=1,
                                    temperature=[0.0], without_timestamps=True, vad_filter=False,
                                    condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments).strip()

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgegate-espeak-") as tmp:
        for i, (lang, source, refs) in enumerate(SENTENCES):
            wav = synthesise(source, lang, Path(tmp), f"{lang}{i}", args.rate)
            audio = load_audio(wav)
            t0 = time.perf_counter()
            translation = model.transcribe_windows(audio, language=lang, task="translate",
                                                   beam_size=args.beam_size).text
            t1 = time.perf_counter()
            transcription = model.transcribe_windows(audio, language=lang, task="transcribe",
                                                     beam_size=args.beam_size).text
            t2 = time.perf_counter()
            rows.append({"language": lang, "source": source, "references": list(refs),
                         "audio_seconds": len(audio) / 16000,
                         "translation": translation, "translation_check": english_check(translation),
                         "translate_seconds": t1 - t0,
                         "transcription": transcription, "transcription_check": english_check(transcription),
                         "transcribe_seconds": t2 - t1})
            if fw is not None:
                rows[-1]["faster_whisper_translation"] = fw_run(audio, lang, "translate")
                rows[-1]["faster_whisper_transcription"] = fw_run(audio, lang, "transcribe")
            print(f"  {lang} {i}: {translation!r}", file=sys.stderr)

    for r in rows:
        tc, sc = r["translation_check"], r["transcription_check"]
        print(f"[{r['language']}] source:        {r['source']}")
        print(f"     reference:     {r['references'][0]}")
        print(f"     translate:     {r['translation']}   "
              f"[{'English' if tc['english'] else 'NOT English: ' + '; '.join(tc['reasons'])}]")
        print(f"     transcribe:    {r['transcription']}   "
              f"[{'passes as English!' if sc['english'] else 'not English: ' + '; '.join(sc['reasons'])}]")
        if fw is not None:
            print(f"     fw translate:  {r['faster_whisper_translation']}")
            print(f"     fw transcribe: {r['faster_whisper_transcription']}")

    langs = sorted({r["language"] for r in rows})
    scores = {"all": bleu([r["translation"] for r in rows], [tuple(r["references"]) for r in rows])}
    control = {"all": bleu([r["transcription"] for r in rows], [tuple(r["references"]) for r in rows])}
    for lang in langs:
        sub = [r for r in rows if r["language"] == lang]
        scores[lang] = bleu([r["translation"] for r in sub], [tuple(r["references"]) for r in sub])
        control[lang] = bleu([r["transcription"] for r in sub], [tuple(r["references"]) for r in sub])
    fw_scores = {}
    if fw is not None:
        fw_scores["all"] = bleu([r["faster_whisper_translation"] for r in rows],
                                [tuple(r["references"]) for r in rows])
        for lang in langs:
            sub = [r for r in rows if r["language"] == lang]
            fw_scores[lang] = bleu([r["faster_whisper_translation"] for r in sub],
                                   [tuple(r["references"]) for r in sub])
    n_english = sum(r["translation_check"]["english"] for r in rows)
    n_control_pass = sum(r["transcription_check"]["english"] for r in rows)

    print()
    print("BLEU (sacrebleu, 2 refs): translate " +
          ", ".join(f"{k} {v:.1f}" for k, v in scores.items()) +
          " | transcribe (control) " + ", ".join(f"{k} {v:.1f}" for k, v in control.items()))
    if fw_scores:
        print("BLEU faster-whisper int8 translate (yardstick): " +
              ", ".join(f"{k} {v:.1f}" for k, v in fw_scores.items()))
    print(f"English check: {n_english}/{len(rows)} translations pass")
    print(f"sanity: {n_control_pass}/{len(rows)} untranslated transcriptions pass the English check "
          f"({'OK, the check rejects German/Spanish' if n_control_pass == 0 else 'FAILED: the check is too lax'})")

    status = 0 if n_english == len(rows) else 1
    if status == 0 and n_control_pass:
        status = 3
    data = {
        "benchmark": "translate_espeak",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "threads": args.threads,
        "beam_size": args.beam_size,
        "espeak_rate_wpm": args.rate,
        "synthesis": "espeak-ng -v LANG -s RATE -w raw.wav TEXT; sox -D raw.wav -r 16000 -c 1 -b 16 out.wav",
        "english_check": "no de/es function words, <=2% non-ASCII letters, >=25% common English words",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "sacrebleu": sacrebleu.__version__},
        "bleu_translate": scores,
        "bleu_transcribe_control": control,
        "bleu_faster_whisper_int8_translate": fw_scores or None,
        "translations_english": n_english,
        "transcriptions_passing_english_check": n_control_pass,
        "clips": rows,
        "passed": status == 0,
        "exit_status": status,
    }
    write_json_atomic(args.output, data)
    print(f"wrote {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
