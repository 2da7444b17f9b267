"""edgegate: context-aware dynamic pruning of speech foundation models for edge devices.

Importing this package is cheap and torch-free; torch is only imported by the model,
training and export modules.
"""

__version__ = "0.1.0"

