"""Loading a data set on a hub through ``datasets.load_dataset`` (``records.read_records`` turns its rows
into records).

Only a config that names a ``hub:`` source fetches anything; ``datasets`` caches what it fetched, so
the preflight's read and the stage's read download once. Every failure (no network, a name that does
not exist, a gated repository, an unknown configuration or split) becomes a ``DataError`` naming the
data set, raised before any work starts.
"""

from __future__ import annotations

from sdft.config.sources import HubSource
from sdft.errors import DataError


def load_hub(src: HubSource):
    """``datasets.load_dataset`` of ``src``: a ``Dataset`` (a split was named) or a ``DatasetDict``."""
    import datasets

    kwargs = {"revision": src.revision, "data_files": src.data_files}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        loaded = datasets.load_dataset(src.name, src.config, split=src.split or None, **kwargs)
    except ConnectionError as e:
        raise DataError(f"{src.spec}: cannot reach the data set {src.name!r} on the hub ({e}); check the name "
                        "and the network (HF_HUB_OFFLINE=1 forbids any download), or point at a local copy") from None
    except FileNotFoundError as e:
        raise DataError(f"{src.spec}: no data set {src.name!r} (or no files matching data_files) on the hub "
                        f"or on disk ({e})") from None
    except ValueError as e:  # unknown split or configuration: datasets lists what exists
        raise DataError(f"{src.spec}: {e}") from None
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
        raise DataError(f"{src.spec}: {src.name!r} is a loading script, which datasets no longer runs; read its data "
                        f"files instead: hub:json?data_files=hf://datasets/{src.name}/<file>&split=train") from None
    except Exception as e:  # gated or private repositories, authentication
        if type(e).__module__.split(".")[0] not in ("datasets", "huggingface_hub", "requests", "fsspec"):
            raise
        raise DataError(f"{src.spec}: loading {src.name!r} failed: {type(e).__name__}: {e}") from None
    return loaded
