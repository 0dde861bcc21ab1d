"""galsae-lake: sparse-autoencoder features of galaxy embeddings, compared with Galaxy Zoo labels.

The library does the work; the ``galsae-lake`` command is a thin layer over it::

    from galsae_lake import Lake
    lake = Lake("lake")
    lake.read("feature_summary", model_id="sae-zoobot-synth-9a1f36")
"""

__version__ = "0.1.0"

import os as _os  # noqa: E402

# OpenMP threads that spin while they wait make torch many times slower whenever another process
# shares the cores (measurements: docs/benchmarks.md). Set before torch is first imported; a
# user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from galsae_lake.errors import GalsaeError  # noqa: E402
from galsae_lake.lake import Lake  # noqa: E402

__all__ = ["GalsaeError", "Lake", "__version__"]
