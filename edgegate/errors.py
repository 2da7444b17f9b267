"""User-facing errors: each one names the problem and the fix in one line.

The CLI catches ``EdgegateError`` and prints ``error: <message>`` without a traceback.
"""


class EdgegateError(Exception):
    """Base class for errors the user can act on."""


class AudioError(EdgegateError):
    """The audio cannot be used as given (empty, NaN, unreadable, missing)."""


class ModelError(EdgegateError):
    """A model or its weights cannot be found or loaded."""


class BundleError(EdgegateError):
    """A bundle is missing, corrupted, tampered with or of an unknown schema."""


class BudgetError(EdgegateError):
    """A sparsity budget is out of range or cannot be met."""


class BackendError(EdgegateError):
    """A runtime backend is not installed or cannot run here."""
