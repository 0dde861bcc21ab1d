"""Image encoders by name, and the extraction that fills the ``embeddings`` table.

Three jobs, three modules:

- :mod:`~galsae_lake.encoders.registry`: the encoders by name and their weights (hub, random,
  a hub-layout folder, the stand-ins'), :func:`load_encoder`, :func:`save_hub_folder`.
- :mod:`~galsae_lake.encoders.extraction`: the fast extraction loop over encoded images
  (:class:`ExtractionStream`, :func:`extract`) and one batch of decoded pixels through an
  encoder (:func:`embed_batch`), reusable by any engine.
- :mod:`~galsae_lake.encoders.stage`: the ``embed`` stage over the lake's ``images`` table,
  with ``--shard`` and the merge of shards.

The names below are the public ones; import them from here.
"""

from galsae_lake.encoders.extraction import (CHUNK_ROWS, Extraction, ExtractionStream,
                                             cpu_has_native_bf16, decode_image, embed_batch,
                                             extract, forward_features, memory_chunks,
                                             resolve_device, resolve_precision)
from galsae_lake.encoders.registry import (ENCODERS, MAE_EUCLID_ARCH, RANDOM_SEED,
                                           SHIPPED_WEIGHTS, EncoderInfo, EncoderSpec, build_model,
                                           encoder_spec, encoder_tag, load_encoder,
                                           parse_features, register_architectures,
                                           save_hub_folder, standin_weights_dir)
from galsae_lake.encoders.stage import embed, parse_shard, shard_mask

__all__ = [
    "CHUNK_ROWS", "ENCODERS", "MAE_EUCLID_ARCH", "RANDOM_SEED", "SHIPPED_WEIGHTS", "EncoderInfo",
    "EncoderSpec", "Extraction", "ExtractionStream", "build_model", "cpu_has_native_bf16",
    "decode_image", "embed", "embed_batch", "encoder_spec", "encoder_tag", "extract",
    "forward_features", "load_encoder", "memory_chunks", "parse_features", "parse_shard",
    "register_architectures", "resolve_device", "resolve_precision", "save_hub_folder",
    "shard_mask", "standin_weights_dir",
]
