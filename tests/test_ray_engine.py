"""embed --engine ray on a local Ray cluster (2 CPUs): the same embeddings as the plain loop,
fixed-size-list vectors, corrupt images reported, resume per split, the driver alone writes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from galsae_lake.encoders import embed  # noqa: E402
from galsae_lake.errors import InputError  # noqa: E402
from galsae_lake.ray_engine import plan_actors  # noqa: E402
from galsae_lake.testing import assert_one_line_error, cli, lake_hash  # noqa: E402
from test_embed import make_lake  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # fresh processes / a JVM / a Ray cluster
def test_ray_engine_embeds_like_the_plain_loop(tmp_path, local_ray, capsys):
    args = dict(weights="random", precision="fp32", batch_size=4, splits=["train"], progress=False)
    plain, on_ray = make_lake(tmp_path / "plain"), make_lake(tmp_path / "ray")
    embed(plain, "zoobot-synth", workers=0, **args)
    summary = embed(on_ray, "zoobot-synth", engine="ray", log=print, **args)
    assert summary["splits"]["train"]["rows"] == 9
    assert summary["splits"]["train"]["skipped_corrupt"] == 1
    assert "corrupt image g3 in images/split=train" in capsys.readouterr().out
    (a,), (b,) = plain.files("embeddings", split="train"), on_ray.files("embeddings", split="train")
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert tb.schema.equals(ta.schema)  # fixed_size_list<float>[320], not Ray's tensor type
    vector = tb.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector) and vector.list_size == 320
    assert vector.value_type == pa.float32()
    assert tb.column("id_str").to_pylist() == ta.column("id_str").to_pylist()  # input order
    np.testing.assert_allclose(np.stack(tb.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(ta.column("embedding").to_numpy(zero_copy_only=False)),
                               rtol=1e-5, atol=1e-6)
    info = on_ray.partition_info("embeddings", encoder="zoobot-synth", split="train")
    assert info.recorded["engine"] == "ray" and info.corrupt_ids == ["g3"]
    # resume per split: done with these weights and images, so skipped without touching the lake
    before = lake_hash(on_ray.root)
    again = embed(on_ray, "zoobot-synth", engine="ray", log=print, **args)
    assert again["splits"]["train"] == {"skipped": True}
    assert lake_hash(on_ray.root) == before


def test_ray_engine_bad_options_are_one_line(tmp_path):
    lake = make_lake(tmp_path / "lake")
    before = lake_hash(lake.root)
    result = cli("embed", "--encoder", "zoobot-synth", "--weights", "random", "--engine", "ray",
                 "--shard", "0/2", lake=lake.root)
    assert_one_line_error(result, "--shard is for the local engine")
    result = cli("embed", "--encoder", "zoobot-synth", "--ray-address", "auto", lake=lake.root)
    assert_one_line_error(result, "--ray-address needs --engine ray")
    assert lake_hash(lake.root) == before


def test_actor_plan_leaves_room_for_the_listing_and_decode_tasks():
    two = plan_actors({"CPU": 2.0}, None)
    assert two["actors"] == 1 and two["num_gpus"] == 0 and two["num_cpus"] == 0.5
    big = plan_actors({"CPU": 16.0}, "cpu")
    assert big["actors"] == 4 and big["num_cpus"] * 4 + 1 + 0.5 <= 16
    gpus = plan_actors({"CPU": 32.0, "GPU": 4.0}, None)
    assert (gpus["actors"], gpus["num_gpus"], gpus["device"]) == (4, 1, "cuda")
    with pytest.raises(InputError, match="no GPUs"):
        plan_actors({"CPU": 2.0}, "cuda")
