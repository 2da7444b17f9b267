"""Torch twin of :mod:`edgegate.frontend` for training (batched, differentiable, runs on GPU).

Uses the exact filterbank of the numpy frontend so features seen in training equal those computed on
the device; ``tests/test_frontend.py`` checks the two agree.
"""

from __future__ import annotations

from functools import cache

import torch

from edgegate.errors import AudioError
from edgegate.frontend import HOP_LENGTH, N_FFT, N_MELS, mel_filters

__all__ = ["mel_filters_torch", "log_mel_spectrogram_torch", "pooled_stats_torch"]


@cache
def _filters_cpu(n_mels: int) -> torch.Tensor:
    # np.array copy: the numpy filters are read-only and torch.from_numpy warns on those.
    return torch.from_numpy(mel_filters(n_mels).copy())


def mel_filters_torch(
    n_mels: int = N_MELS, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The numpy frontend's Slaney filterbank as a tensor, shape ``(n_mels, 201)``."""
    return _filters_cpu(n_mels).to(device=device, dtype=dtype)


def log_mel_spectrogram_torch(audio: torch.Tensor, n_mels: int = N_MELS, padding: int = 0) -> torch.Tensor:
    """Whisper log-mel spectrogram: ``(T,) -> (n_mels, T' // 160)`` or ``(B, T) -> (B, n_mels, T' // 160)``.

    ``T' = T + padding``. Same steps as whisper's ``log_mel_spectrogram``; for batched input the
    ``max - 8`` floor is taken per item, so each item equals the unbatched result for that item.
    Gradients flow through to ``audio``.
    """
    if not isinstance(audio, torch.Tensor):
        audio = torch.as_tensor(audio)
    if audio.dim() not in (1, 2):
        raise AudioError(
            f"log_mel_spectrogram_torch expects (T,) or (B, T) audio, got shape {tuple(audio.shape)}; "
            "mix down channels first"
        )
    if not torch.is_floating_point(audio):
        raise AudioError(
            f"log_mel_spectrogram_torch expects float audio in [-1, 1], got dtype {audio.dtype}; "
            "scale integer PCM first (edgegate.audio.prepare_audio)"
        )
    if padding < 0:
        raise AudioError(f"padding must be >= 0 samples, got {padding}; pass 0 or a positive sample count")
    if padding > 0:
        audio = torch.nn.functional.pad(audio, (0, padding))
    if audio.shape[-1] == 0:
        raise AudioError("audio is empty (0 samples); pass at least one sample or use padding=N_SAMPLES")
    if audio.shape[-1] <= N_FFT // 2:
        # torch.stft's reflect padding needs more samples than the pad; numpy's frontend copes, torch doesn't.
        raise AudioError(
            f"audio has {audio.shape[-1]} samples, too short for the STFT (needs > {N_FFT // 2}); "
            "pass padding=N_SAMPLES as whisper does"
        )

    window = torch.hann_window(N_FFT, device=audio.device, dtype=audio.dtype)
    stft = torch.stft(
        audio, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    # Contiguous copy: the sliced view makes the following matmul take a slow strided path on CPU.
    magnitudes = (stft[..., :-1].abs() ** 2).contiguous()

    filters = mel_filters_torch(n_mels, device=audio.device, dtype=audio.dtype)
    mel_spec = filters @ magnitudes

    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    if log_spec.shape[-1] == 0:
        return log_spec
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def pooled_stats_torch(mel: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mel-bin mean and population std over time: ``(..., n_mels, T) -> (..., 2 * n_mels)``.

    For a padded batch ``(B, n_mels, T)`` pass ``lengths`` (B,) = real frame counts, so the statistics
    cover only the real frames, matching :func:`edgegate.frontend.pooled_stats` on the unpadded item.
    """
    if mel.dim() < 2:
        raise AudioError(f"pooled_stats_torch expects (..., n_mels, frames), got shape {tuple(mel.shape)}")
    n_total = mel.shape[-1]
    if lengths is None:
        if n_total == 0:
            raise AudioError(
                "cannot pool statistics over 0 mel frames; pass audio longer than one hop (10 ms)"
            )
        mean = mel.mean(dim=-1)
        var = (mel - mean.unsqueeze(-1)).square().mean(dim=-1)
    else:
        if mel.dim() != 3:
            raise AudioError(
                f"lengths needs a batched (B, n_mels, T) mel, got shape {tuple(mel.shape)}; "
                "drop lengths or add a batch dim"
            )
        lengths = torch.as_tensor(lengths, device=mel.device)
        if lengths.shape != (mel.shape[0],):
            raise AudioError(
                f"lengths must have shape ({mel.shape[0]},), got {tuple(lengths.shape)}; pass one per item"
            )
        if bool((lengths <= 0).any()) or bool((lengths > n_total).any()):
            raise AudioError(
                f"lengths must be in [1, {n_total}] frames, got {lengths.tolist()}; pass real frame counts"
            )
        mask = (torch.arange(n_total, device=mel.device)[None, :] < lengths[:, None]).to(mel.dtype)
        mask = mask.unsqueeze(1)  # (B, 1, T)
        count = lengths.to(mel.dtype)[:, None]  # (B, 1)
        mean = (mel * mask).sum(dim=-1) / count
        var = ((mel - mean.unsqueeze(-1)) * mask).square().sum(dim=-1) / count
    # Population std (numpy's default, not torch.std's unbiased one). Constant bins (silence at the floor)
    # have var == 0, where sqrt's gradient is infinite; the clamp + where keeps the backward pass finite.
    std = torch.where(var > 0, var.clamp_min(1e-20).sqrt(), torch.zeros_like(var))
    return torch.cat([mean, std], dim=-1)
