"""The store: a folder or an object-store URI holding slices, latents, indices, models and the catalog.

Layout (DESIGN section 4): `slices/`, `latents/model_id=<id>/`, `index/`, `models/<model_id>/`,
`catalog.duckdb`. Paths are resolved once here so that every stage agrees on them.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LATENTSTORE_STORE"
DEFAULT_STORE = "./latentstore-store"


def resolve_store(store: str | os.PathLike | None = None) -> str:
    """The store location: `store` if given, else `$LATENTSTORE_STORE`, else `./latentstore-store`.

    Local paths come back absolute; URIs (`s3://bucket/prefix`) come back unchanged.
    """
    value = str(store) if store else os.environ.get(ENV_VAR) or DEFAULT_STORE
    if "://" in value and not value.startswith("file://"):
        return value
    return str(Path(value.removeprefix("file://")).expanduser().resolve())
