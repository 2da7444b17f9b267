"""Word timestamps from cross-attention: alignment heads, median filter, DTW, words with punctuation.

The method of openai-whisper's ``timing.py``, in numpy: the decoder is run teacher-forced over
``[sot, language, task, <|notimestamps|>, text..., <|endoftext|>]``; the pre-softmax cross-attention
scores of the model's *alignment heads* (the heads whose attention tracks time) are softmaxed over
the window's real frames, standardised per frame, median-filtered over time, averaged, and a
DTW path through the (token x frame) matrix gives each token's start frame.
"""

from __future__ import annotations

import base64
import gzip
import string
from dataclasses import dataclass

import numpy as np

from edgegate.frontend import HOP_LENGTH, SAMPLE_RATE

TOKENS_PER_SECOND = SAMPLE_RATE / HOP_LENGTH / 2  # 50 encoder positions per second
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}

# Which (layer, head) pairs of Whisper base (multilingual) align with time: the mask openai-whisper
# publishes for its "base" checkpoint (gzip'd bool array (n_text_layer, n_text_head), base85), data.
ALIGNMENT_HEADS = {"whisper-base": b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m"}


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def alignment_heads(n_text_layer: int, n_text_head: int, dump: bytes | None = None) -> np.ndarray:
    """(layer, head) index pairs, shape (2, n); without a published mask, all heads of the upper half."""
    if dump is not None:
        mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool).reshape(n_text_layer, n_text_head)
    else:
        mask = np.zeros((n_text_layer, n_text_head), dtype=bool)
        mask[n_text_layer // 2:] = True
    return np.stack(np.nonzero(mask))


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of ``width`` (odd) along the last axis, reflect-padded."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment path minimising the summed cost ``x`` (N, M): (row indices, column indices).

    Filled one anti-diagonal at a time (cells i + j = d depend only on diagonals d - 1 and d - 2);
    costs are kept in float32 and ties broken as openai-whisper's ``dtw_cpu`` does.
    """
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        c = np.where(t == 0, c0, np.where(t == 1, c1, c2))
        cost[i, j] = (x[i - 1, j - 1] + c).astype(np.float32)
        trace[i, j] = t
    return _backtrace(trace)


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        if t == 0:
            i, j = i - 1, j - 1
        elif t == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_words(tokenizer, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: at spaces and punctuation, or at every whole character (zh, ja, ...)."""
    pieces, piece_tokens = _split_on_unicode(tokenizer, tokens)
    if language in NO_SPACE_LANGUAGES:
        return pieces, piece_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, toks in zip(pieces, piece_tokens, strict=True):
        if toks[0] >= tokenizer.eot or piece.startswith(" ") or piece.strip() in string.punctuation or not words:
            words.append(piece)
            word_tokens.append(list(toks))
        else:
            words[-1] += piece
            word_tokens[-1].extend(toks)
    return words, word_tokens


def _split_on_unicode(tokenizer, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
    """Split where the decoded text so far holds whole characters (a token may carry half a UTF-8 byte run)."""
    full = tokenizer.decode(tokens)
    words, word_tokens, current = [], [], []
    offset = 0
    for token in tokens:
        current.append(token)
        text = tokenizer.decode(current)
        if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
            words.append(text)
            word_tokens.append(current)
            current = []
            offset += len(text)
    return words, word_tokens


def find_alignment(qk: np.ndarray, logits: np.ndarray, tokenizer, text_tokens: list[int], num_frames: int,
                   language: str, n_sot: int = 3, medfilt_width: int = 7) -> list[WordTiming]:
    """Word timings within a window from ``qk`` (heads, tokens, positions) and ``logits`` (tokens, vocab).

    Both come from one teacher-forced pass over the ``n_sot`` sot-sequence tokens, <|notimestamps|>,
    ``text_tokens`` and <|endoftext|>; ``num_frames`` is the window's real mel frames.
    """
    if not text_tokens:
        return []
    sampled = logits[n_sot:, : tokenizer.eot].astype(np.float64)
    probs = np.exp(sampled - sampled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    token_probs = probs[np.arange(len(text_tokens)), text_tokens]

    w = qk[:, :, : num_frames // 2].astype(np.float32)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    w = (w - w.mean(-2, keepdims=True)) / w.std(-2, keepdims=True)
    matrix = median_filter(w, medfilt_width).mean(axis=0)[n_sot:-1]
    text_indices, time_indices = dtw(-matrix.astype(np.float64))

    words, word_tokens = split_words(tokenizer, text_tokens + [tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    word_probs = [float(np.mean(token_probs[i:j])) for i, j in zip(boundaries[:-1], boundaries[1:], strict=True)]
    return [WordTiming(*row) for row in zip(words, word_tokens, starts.tolist(), ends.tolist(), word_probs,
                                            strict=False)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Attach opening punctuation to the next word and closing punctuation to the previous one (in place)."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(segments: list, text_tokens: list[list[int]], alignment: list[WordTiming], time_offset: float,
                        last_speech_timestamp: float, prepended: str = PREPEND_PUNCTUATIONS,
                        appended: str = APPEND_PUNCTUATIONS) -> None:
    """Give each segment of one window its words (``Segment.words``), adjusting starts/ends as whisper does.

    ``alignment`` holds the timings of all the window's ``text_tokens`` (per segment); over-long
    words at sentence and segment boundaries are shortened to twice the median word duration
    (openai-whisper's heuristics, kept so both agree).
    """
    from edgegate.pipeline import Word

    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2
    if len(durations):
        marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in marks:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in marks:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, prepended, appended)
    index = 0
    for segment, tokens in zip(segments, text_tokens, strict=True):
        n_text = len(tokens)
        saved, words = 0, []
        while index < len(alignment) and saved < n_text:
            t = alignment[index]
            if t.word:
                words.append(Word(round(time_offset + t.start, 2), round(time_offset + t.end, 2), t.word,
                                  t.probability))
            saved += len(t.tokens)
            index += 1
        if words:
            _fix_segment_edges(segment, words, median, longest, last_speech_timestamp)
            last_speech_timestamp = segment.end
        segment.words = words


def _fix_segment_edges(segment, words: list, median: float, longest: float, last_speech: float) -> None:
    first = words[0]
    # The first word after a pause tends to be stretched back into the silence.
    if first.end - last_speech > median * 4 and (
            first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            first.end = words[1].start = boundary
        first.start = max(0, first.end - longest)
    if segment.start < first.end and segment.start - 0.5 > first.start:
        first.start = max(0, min(first.end - median, segment.start))
    else:
        segment.start = first.start
    last = words[-1]
    if segment.end > last.start and segment.end + 0.5 < last.end:
        last.end = max(last.start + median, segment.end)
    else:
        segment.end = last.end
