"""A module's cost as a polynomial of the utterance's shape, so that planning needs no model code.

With ``T`` encoder positions and ``N`` decoder positions a module costs

    one + t*T + tt*T^2 + n*N + nn*N^2 + nt*N*T

(self-attention over the encoder positions grows with T^2, over a decoder cache with N^2,
cross-attention with N*T). Each model family writes its table of terms into the bundle's
manifest (``costs.terms``) and the torch-free runtime evaluates them: a new family needs new
terms, not new runtime code. Integer coefficients evaluate exactly in Python integers, so the
PyTorch model and the runtime plan with bit-identical costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

TERM_NAMES = ("one", "t", "tt", "n", "nn", "nt")

# (encoder positions, decoder positions, cost unit) -> one cost per gate, in gate order
CostFn = Callable[..., Any]


@dataclass(frozen=True)
class CostTerms:
    one: int | float = 0
    t: int | float = 0
    tt: int | float = 0
    n: int | float = 0
    nn: int | float = 0
    nt: int | float = 0

    def at(self, positions: int, tokens: int) -> float:
        """The cost at ``positions`` encoder positions and ``tokens`` decoder positions."""
        T, N = int(positions), int(tokens)
        return float(self.one + self.t * T + self.tt * T * T + self.n * N + self.nn * N * N + self.nt * N * T)

    def with_fixed_keys(self, keys: int) -> CostTerms:
        """The terms when attention over the encoder positions reads ``keys`` of them whatever ``T`` is (a
        context tail appends the padding's states): T*T becomes keys*T and N*T becomes keys*N."""
        return CostTerms(self.one, self.t + self.tt * keys, 0, self.n + self.nt * keys, self.nn, 0)

    def __add__(self, other: CostTerms) -> CostTerms:
        return CostTerms(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, int | float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostTerms:
        return cls(**{k: d[k] for k in TERM_NAMES if k in d})


def evaluate(terms: Mapping[str, CostTerms], positions: int, tokens: int) -> dict[str, float]:
    """Every entry of a cost table at one utterance shape."""
    return {name: t.at(positions, tokens) for name, t in terms.items()}


__all__ = ["CostTerms", "CostFn", "TERM_NAMES", "evaluate"]
