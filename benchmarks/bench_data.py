"""Loading throughput (images/s) with and without the decoded-image cache, 0 vs 2 workers.

Two datasets: CUB-layout JPEGs (420x420, near the benchmarks' typical resolution, written as a
fixture in the official layout) and the embedded icon dataset when it is built. Each
configuration iterates the whole split twice (timing the second pass) through the standard
train transform (RandomResizedCrop 224 + flip + normalise); the cache is filled before
timing (its build time is reported separately). Ratios are against "no cache, 0 workers"
measured in the same run. Timings on a shared 2-core machine are noisy.

    python benchmarks/bench_data.py [--images-per-class 12] [--image-size 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from dml_study.data import build_dataloader, build_transforms, get_dataset
from dml_study.data.icons import dataset_dir, read_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fixture_datasets as fixtures


def throughput(ds, workers: int, batch_size: int = 32) -> float:
    """Images per second of the second pass over ``ds`` (persistent workers already up)."""
    loader = build_dataloader(ds, batch_size=batch_size, num_workers=workers, shuffle=True)
    sum(len(y) for _, y in loader)  # warm-up epoch: worker start-up, page cache
    start = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    elapsed = time.perf_counter() - start
    del loader
    return n / elapsed


def bench(name: str, make, image_size: int) -> None:
    transform = build_transforms(True, image_size=image_size)
    plain = make()
    plain.transform = transform
    cached = make()
    start = time.perf_counter()
    cached.enable_decoded_cache(size=round(image_size * 256 / 224), progress=False)
    fill = time.perf_counter() - start
    cached.transform = transform
    rows = []
    for label, ds in (("no cache", plain), ("decoded cache", cached)):
        for workers in (0, 2):
            rows.append((label, workers, throughput(ds, workers)))
    ref = rows[0][2]
    print(f"\n{name}: {len(plain)} images, transform -> {image_size}px "
          f"(cache fill {fill:.1f} s, {cached.cache.nbytes / 2**20:.0f} MiB)")
    print(f"{'config':<16}{'workers':>8}{'images/s':>12}{'ratio':>8}")
    for label, workers, ips in rows:
        print(f"{label:<16}{workers:>8}{ips:>12.0f}{ips / ref:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    # Workers run single-threaded; give the main process (0 workers) the same budget so
    # the comparison is not skewed by intra-op thread oversubscription on a busy machine.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("writing CUB-layout fixture (420x420 JPEGs)...")
        fixtures.write_cub_fixture(root, num_classes=100, images_per_class=args.images_per_class,
                                   size=420)
        bench("CUB-layout JPEGs (~420px)", lambda: get_dataset("cub200", "train", root),
              args.image_size)
    if read_manifest(dataset_dir()) is not None:
        bench("icons (64px PNG), train split",
              lambda: get_dataset("icons", "train", build=False), args.image_size)
    else:
        print("\nicons dataset not built; run `python -m dml_study.data.icons build`")


if __name__ == "__main__":
    main()
