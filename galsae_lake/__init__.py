"""galsae-lake: sparse-autoencoder features of galaxy embeddings, compared with Galaxy Zoo labels.

The library does the work; the ``galsae-lake`` command is a thin layer over it::

    from galsae_lake import Lake
    lake = Lake("lake")
    lake.read("feature_summary", model_id="sae-zoobot-synth-3f9a2c")
"""

__version__ = "0.1.0"

from galsae_lake.errors import GalsaeError  # noqa: E402
from galsae_lake.lake import Lake  # noqa: E402

__all__ = ["GalsaeError", "Lake", "__version__"]
