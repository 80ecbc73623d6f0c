"""HR training crops per second for ONE loader worker: an image folder, a local `yonos shard` dataset, and the same
dataset on a local S3 endpoint (moto's server over TLS in a child process; the first pass downloads every chunk).
Decode + crop + flip only, no model: divide the crops/s your GPUs consume by this to size ``data.num_workers``.

Run: ``python benchmarks/data_loading.py [--images 24] [--size 2040 1356] [--crop 512] [--batch 4]``. Needs the
``cluster`` extra and, for the S3 row, moto[server] and trustme (the ``dev`` extra). Prints a table, then as the last
line one JSON object. A benchmark, not a test: nothing here gates CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import socket
import ssl
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from yonos.batch import crop_hr
from yonos.folders import HRFolderDataset
from yonos.shards import open_shards, shard_loader, write_shards


def make_images(folder: Path, count: int, width: int, height: int) -> int:
    """Smooth random photos-like PNGs (noise on a gradient compresses like a photo, not like flat colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None] + rng.uniform(0, 55, (height, 1, 3))
        pixels = np.clip(ramp + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.png")
    return sum(p.stat().st_size for p in folder.iterdir())


def serve_s3(port: int, cert_dir: str) -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.path.join(cert_dir, "server.pem"))
    app = DomainDispatcherApplication(create_backend_app)
    make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler, ssl_context=context).serve_forever()


def start_s3(cert_dir: Path) -> multiprocessing.Process:
    """moto's S3 server in a child process (so it does not share the loader's interpreter); sets the AWS_* and
    SSL_CERT_FILE variables that boto3 and obstore read."""
    import boto3
    import trustme

    authority = trustme.CA()
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert_dir / "server.pem"))
    authority.cert_pem.write_to_path(str(cert_dir / "ca.pem"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=serve_s3, args=(port, str(cert_dir)), daemon=True)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"https://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1", AWS_CA_BUNDLE=str(cert_dir / "ca.pem"), SSL_CERT_FILE=str(cert_dir / "ca.pem"),
    )
    for _ in range(200):
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            return server
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    raise RuntimeError("the local S3 server did not start")


def crops_per_second(loader) -> tuple[float, int]:
    start, crops = time.perf_counter(), 0
    for batch in loader:
        crops += batch["hr"].shape[0]
    return crops / (time.perf_counter() - start), crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, nargs=2, default=[2040, 1356], metavar=("W", "H"), help="DIV2K-like")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="yonos-data-bench-"))
    megabytes = make_images(root / "images", args.images, *args.size) / 2**20
    crop = functools.partial(crop_hr, hr_size=args.crop)
    rows: dict[str, float] = {}

    folder = HRFolderDataset(root / "images", args.crop, train=True)
    rows["image folder"], _ = crops_per_second(DataLoader(folder, batch_size=args.batch, shuffle=True, num_workers=0))
    write_shards(root / "images", str(root / "shards"), chunk_bytes="64MB")
    rows["local shards"], _ = crops_per_second(shard_loader(open_shards(str(root / "shards"), crop, 0), args.batch, 0))
    if not args.no_s3:
        (root / "certs").mkdir()
        server = start_s3(root / "certs")
        try:
            write_shards(root / "images", "s3://bench/div2k-like", chunk_bytes="64MB")
            remote = open_shards("s3://bench/div2k-like", crop, 0, cache_dir=str(root / "cache"))
            rows["local S3, first pass"], _ = crops_per_second(shard_loader(remote, args.batch, 0))
        finally:
            server.terminate()

    print(f"{args.images} PNGs of {args.size[0]}x{args.size[1]} ({megabytes:.0f} MiB), {args.crop}² crops, batch "
          f"{args.batch}, one worker (num_workers=0), {args.threads} torch thread(s)")
    print(f"{'source':<24} {'HR crops/s per worker':>22}")
    for name, rate in rows.items():
        print(f"{name:<24} {rate:>22.1f}")
    print(json.dumps({"crops_per_s_per_worker": {k: round(v, 2) for k, v in rows.items()}, "images": args.images,
                      "size": args.size, "crop": args.crop}))


if __name__ == "__main__":
    main()
