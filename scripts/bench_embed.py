"""Images/s of galsae-lake's embed against the seed's approach, on the same images and model.

Three measurements in one run, same architecture and weights (random: the arithmetic is the same):

* seed     the seed's create_embeddings.py loop: PIL decode in a Dataset, torchvision
           Resize((s, s)) + ToTensor, DataLoader(batch 64, 4 workers), fp32, a forward hook on
           ``head`` copying activations to the CPU
* ours     galsae_lake.encoders.extract (the code behind ``galsae-lake embed``)
* forward  the forward-only limit: ours' precision and batch size, tensors already on the device
* input    the input-only limit: ours' DataLoader (decode and resize in its workers) and the copy
           to the device, no model; where it is below ``forward``, decoding bounds ``ours``

Images are synthetic galaxies (galsae_lake.sources.synthetic) encoded as PNG at their native 64 px
(what ``synth`` stores) or re-encoded with --source-size/--image-format (e.g. 224 px JPEG).

    python scripts/bench_embed.py [--encoder zoobot-euclid] [--n 512] [--device cpu]
    python scripts/bench_embed.py --device cuda --encoder zoobot-euclid,mae-euclid --n 8192
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import torch


def make_images(n: int, size: int, fmt: str, seed: int = 0) -> list[bytes]:
    from PIL import Image

    from galsae_lake.sources import synthetic as sy

    pop = sy.draw_population(n, seed=seed)
    blobs = []
    for start in range(0, n, 256):
        index = np.arange(start, min(n, start + 256))
        for png in sy.render_png(pop, index):
            if size == 64 and fmt == "png":
                blobs.append(png)
                continue
            img = Image.open(io.BytesIO(png)).convert("RGB").resize((size, size), Image.BILINEAR)
            out = io.BytesIO()
            img.save(out, "JPEG" if fmt == "jpeg" else "PNG", quality=90)
            blobs.append(out.getvalue())
    return blobs


def seed_approach(model, blobs: list[bytes], size: int, device: str) -> tuple[np.ndarray, float]:
    """The seed's ImageActivationExtractor, reproduced (hook on 'head', fp32, 4 workers, batch 64)."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])

    class Images(Dataset):
        def __len__(self):
            return len(blobs)

        def __getitem__(self, idx):
            img = Image.open(io.BytesIO(blobs[idx]))  # what HF datasets' Image feature does
            try:
                if img.mode != "RGB":
                    img = img.convert("RGB")
                return transform(img), str(idx)
            except Exception:
                return torch.zeros(3, 224, 224), str(idx)  # the seed zero-fills (a fault we fix)

    activations = {}
    handle = model.head.register_forward_hook(
        lambda module, inputs, output: activations.__setitem__("head", output.detach().cpu()))
    model.to(device).float().to(memory_format=torch.contiguous_format)
    start = time.perf_counter()
    loader = DataLoader(Images(), batch_size=64, num_workers=4)
    outputs = []
    with torch.no_grad():
        for batch, _ in loader:
            model(batch.to(device))
            outputs.append(activations["head"].numpy())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    handle.remove()
    return np.vstack(outputs), seconds


def input_limit(model, info, blobs: list[bytes], batch_size: int, device: str,
                workers: int | None) -> float:
    """Images/s of ours' input pipeline alone: decoding and resizing in the DataLoader workers
    and the copy to the device, with ours' batch size and workers, no model."""
    from galsae_lake.encoders.extraction import ExtractionStream, _load_size, memory_chunks

    stream = ExtractionStream(model, info, memory_chunks(blobs), len(blobs),
                              _load_size(blobs, info.input_size), batch_size, device, workers,
                              progress=False)
    start = time.perf_counter()
    for pixels, *_ in stream.pieces():
        pixels.to(device, non_blocking=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(blobs) / (time.perf_counter() - start)


def forward_limit(model, info, batch_size: int, precision: str, device: str, n: int) -> float:
    """Images/s of the forward pass alone, inputs already on the device."""
    from galsae_lake.encoders.extraction import forward_features

    cuda = device.startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model.to(device).to(memory_format=fmt)
    x = torch.rand(batch_size, 3, info.input_size, info.input_size, device=device).contiguous(
        memory_format=fmt)
    steps = max(1, n // batch_size)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], torch.bfloat16,
                                                enabled=precision == "bf16"):
        for _ in range(2):
            forward_features(model, x, info.features)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            forward_features(model, x, info.features).float()
        if cuda:
            torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def bench(encoder: str, blobs: list[bytes], device: str, batch_size: int | None,
          workers: int | None, skip_seed: bool, repeats: int = 1) -> dict:
    """Median images/s of each method over ``repeats`` rounds, the methods interleaved so that
    load from other processes hits them alike."""
    from galsae_lake.encoders import extract, load_encoder

    model, info = load_encoder(encoder, weights="random")
    n = len(blobs)
    extract(model, info, blobs[: min(n, 64)], batch_size, device, 0, progress=False)  # warm up
    rates: dict[str, list[float]] = {"ours": [], "forward": [], "input": [], "seed": []}
    cosine_min = None
    for _ in range(repeats):
        ours = extract(model, info, blobs, batch_size, device, workers, progress=False)
        rates["ours"].append(n / ours.seconds)
        rates["forward"].append(forward_limit(model, info, ours.batch_size, ours.precision,
                                              device, max(n, 4 * ours.batch_size)))
        rates["input"].append(input_limit(model, info, blobs, ours.batch_size, device, workers))
        if not skip_seed:
            seed_emb, seconds = seed_approach(model, blobs, info.input_size, device)
            rates["seed"].append(n / seconds)
            a = ours.embeddings.astype(np.float64)
            b = seed_emb[ours.kept].astype(np.float64)
            cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
            cosine_min = float(cos.min())
    med = {k: float(np.median(v)) for k, v in rates.items() if v}
    row = {"encoder": encoder, "arch": info.arch, "input": info.input_size, "n": n,
           "repeats": repeats, "device": device, "ours_precision": ours.precision,
           "ours_batch": ours.batch_size, "ours_workers": ours.workers,
           "ours_img_s": round(med["ours"], 1), "forward_img_s": round(med["forward"], 1),
           "ours_vs_forward": round(med["ours"] / med["forward"], 3),
           "input_img_s": round(med["input"], 1),
           "all_img_s": {k: [round(r, 1) for r in v] for k, v in rates.items()}}
    if "seed" in med:
        row["seed_img_s"] = round(med["seed"], 1)
        row["ours_vs_seed"] = round(med["ours"] / med["seed"], 2)
        row["cosine_ours_seed_min"] = round(cosine_min, 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="zoobot-euclid", help="comma-separated encoders")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--device", default=None)
    parser.add_argument("--source-size", type=int, default=64)
    parser.add_argument("--image-format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    from galsae_lake.encoders import resolve_device

    device = resolve_device(args.device)
    blobs = make_images(args.n, args.source_size, args.image_format)
    print(f"{len(blobs)} images, {args.source_size} px {args.image_format}, "
          f"{sum(map(len, blobs)) / len(blobs) / 1024:.1f} KB each, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    for encoder in args.encoder.split(","):
        row = bench(encoder, blobs, device, args.batch_size, args.workers, args.skip_seed,
                    args.repeats)
        rows.append(row)
        print(json.dumps(row))
        print(f"{encoder}: ours {row['ours_img_s']} img/s, seed {row.get('seed_img_s', '-')} img/s "
              f"(x{row.get('ours_vs_seed', '-')}), forward-only {row['forward_img_s']} img/s "
              f"(ours = {100 * row['ours_vs_forward']:.0f}% of it), input pipeline alone "
              f"{row['input_img_s']} img/s ({row['ours_workers']} workers)", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
