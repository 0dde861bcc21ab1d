"""``galsae-lake export hats``: the galaxies with positions and their SAE features (and PCA scores)
as a HATS catalogue, so any HATS catalogue (the Euclid Q1 ones at IRSA, a local one) can be
cross-matched with the features in a few lines of LSDB::

    import lsdb
    ours = lsdb.open_catalog("lake/hats/sae-zoobot-synth-9a1f36")
    matched = ours.crossmatch(lsdb.open_catalog("other_catalogue"), radius_arcsec=1.0)
    matched.compute()

The rows come from ``sql/hats_galaxies.sql`` (DuckDB over the lake's views); LSDB partitions them
by HEALPix (``lsdb.from_dataframe``) and writes the catalogue (``write_catalog``: Parquet per
HEALPix pixel, ``hats.properties``, a MOC and a skymap). The catalogue is written to a staging
folder beside ``out`` and renamed into place, so a failure leaves no half catalogue.
Needs the optional extra: ``pip install 'galsae-lake[hats]'``.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, query

#: top features kept per galaxy (strongest first)
DEFAULT_TOP = 8
#: the largest HEALPix order of the partitioning, and rows per partition
HIGHEST_ORDER = 7
PARTITION_ROWS = 100_000

_EMPTY_VIEWS = {
    "sae_activations": "SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS split, NULL::VARCHAR AS "
                       "id_str, NULL::INTEGER AS feature, NULL::FLOAT AS activation WHERE false",
    "pca_scores": "SELECT NULL::VARCHAR AS pca_id, NULL::VARCHAR AS split, NULL::VARCHAR AS "
                  "id_str, NULL::INTEGER AS component, NULL::FLOAT AS score WHERE false",
}


def hats_dir(lake: Lake, model_id: str) -> Path:
    """The default catalogue folder: ``<root>/hats/<model_id>`` (beside ``figures/``)."""
    return lake.root / "hats" / model_id


def galaxy_rows(lake: Lake, model_id: str, top: int = DEFAULT_TOP, pca: str | None = "auto"):
    """The catalogue's rows as a pyarrow Table, and the (sae_id, pca_id) they hold.

    ``model_id``: an SAE run (its top features; plus the PCA scores of ``pca``: a pca_id,
    ``auto`` for the newest PCA of the same encoder if any, or None) or a PCA (its scores).
    """
    from galsae_lake.models import newest_pca, resolve_model

    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    model = resolve_model(lake, model_id)
    sae_id = model.model_id if model.kind == "sae" else ""
    if model.kind == "pca":
        pca_id = model.model_id
    elif pca == "auto":
        pca_id = newest_pca(lake, model.encoder) or ""
    elif pca:
        other = resolve_model(lake, pca)
        if other.kind != "pca" or other.encoder != model.encoder:
            raise InputError(f"--pca {pca}: not a PCA of encoder {model.encoder!r}")
        pca_id = pca
    else:
        pca_id = ""
    if not lake.exists("galaxies"):
        raise InputError(f"table galaxies has no data in {lake.root}; nothing has positions")
    con = lake.connect()
    try:
        have = set(lake.tables())
        for name, empty in _EMPTY_VIEWS.items():
            if name not in have:
                con.execute(f"CREATE VIEW {name} AS {empty}")
        rows = con.sql(query("hats_galaxies"), params={
            "encoder": model.encoder, "sae_id": sae_id, "pca_id": pca_id, "top": top,
        }).to_arrow_table()
    finally:
        con.close()
    if rows.num_rows == 0:
        raise InputError(f"no galaxy of encoder {model.encoder!r} has a position (ra, dec) in "
                         f"table galaxies; a HATS catalogue needs positions")
    return rows, sae_id or None, pca_id or None


def export_hats(lake: Lake, model_id: str, out: str | Path | None = None, top: int = DEFAULT_TOP,
                pca: str | None = "auto") -> dict:
    """Write the HATS catalogue of ``model_id`` to ``out`` (default :func:`hats_dir`), replacing
    one that is there. Returns ``{"path", "rows", "partitions", "sae_id", "pca_id"}``."""
    try:
        import lsdb
    except ImportError:
        raise InputError("export hats needs LSDB and HATS: pip install 'galsae-lake[hats]'") from None
    rows, sae_id, pca_id = galaxy_rows(lake, model_id, top, pca)
    out = Path(out).expanduser().absolute() if out is not None else hats_dir(lake, model_id)
    ours = any((out / name).exists() for name in ("hats.properties", "collection.properties"))
    if out.exists() and not ours and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not a HATS catalogue; choose another folder")
    frame = rows.to_pandas(types_mapper=_arrow_dtype)
    catalog = lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", catalog_name=model_id,
                                  highest_order=HIGHEST_ORDER, partition_rows=PARTITION_ROWS)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        catalog.write_catalog(staging, catalog_name=model_id, progress_bar=False,
                              addl_hats_properties={"galsae_model": model_id,
                                                    "galsae_sae_id": sae_id or "",
                                                    "galsae_pca_id": pca_id or "",
                                                    "galsae_top_features": str(top)})
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    catalog_path = Path(out)
    partitions = len(catalog.get_healpix_pixels())
    return {"path": catalog_path, "rows": rows.num_rows, "partitions": partitions,
            "sae_id": sae_id, "pca_id": pca_id}


def _arrow_dtype(arrow_type):
    import pandas as pd

    return pd.ArrowDtype(arrow_type)
