"""Reader for CTranslate2's ``model.bin`` (binary version 6) without importing ctranslate2.

Layout, as written by ``ctranslate2.specs.ModelSpec.save``: version, spec name, revision,
then each variable (name, rank, shape, dtype id, byte count, raw bytes), then aliases.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edgegate.errors import ModelError

# Type ids from ctranslate2.specs.model_spec._dtype_to_type_id.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Return (spec name, {variable name: array}) with aliases resolved."""
    path = Path(path)
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("<H")
        s = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return s

    try:
        (version,) = take("<I")
        if version < 5 or version > 6:
            raise ModelError(f"{path}: CTranslate2 binary version {version} is not supported (need 5 or 6)")
        spec = string()
        take("<I")  # revision
        (count,) = take("<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = string()
            (rank,) = take("<B")
            shape = take(f"<{rank}I") if rank else ()
            (type_id,) = take("<B")
            (nbytes,) = take("<I")
            if type_id not in _DTYPES:
                raise ModelError(f"{path}: variable {name} has unsupported dtype id {type_id} (bfloat16/fp8)")
            array = np.frombuffer(data, dtype=_DTYPES[type_id], count=nbytes // np.dtype(_DTYPES[type_id]).itemsize,
                                  offset=pos)
            pos += nbytes
            variables[name] = array.reshape(shape)
        (n_alias,) = take("<I")
        for _ in range(n_alias):
            alias = string()
            target = string()
            variables[alias] = variables[target]
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a valid CTranslate2 model.bin ({exc}); re-convert or re-download it") from exc
    return spec, variables
