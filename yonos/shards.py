"""HR training images as a LitData dataset: ``yonos shard`` writes one with ``litdata.optimize``;
:class:`StreamingHRDataset` streams HR crops from it (a local folder or an ``s3://`` / ``gs://`` URL) through
LitData's ``StreamingDataLoader``, which splits the chunks between ranks and workers and saves its position in
Lightning checkpoints. Needs the ``cluster`` extra (``pip install "yonos[cluster]"``).

Each sample holds the image file's original bytes (``image``), its stem (``name``) and its path inside the
source folder (``source``). This module does not import :mod:`yonos.data`: the crop function is handed in.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from yonos.commands import command_parser, parse
from yonos.images import IMAGE_EXTENSIONS, list_images, read_rgb
from yonos.seeds import crop_generator

REMOTE_SCHEMES = ("s3://", "gs://")
INSTALL_HINT = 'the LitData engine is not installed: pip install "yonos[cluster]" (litdata, boto3)'


def _litdata() -> Any:
    try:
        import litdata
    except ImportError as err:
        raise ImportError(f"data.train_shards / yonos shard: {INSTALL_HINT}") from err
    return litdata


def is_remote(location: str) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


# Writing.


def encode_sample(item: list[str]) -> dict[str, Any]:
    """One sample from (file path, path relative to the source folder): the file's bytes, unchanged."""
    path, source = item
    return {"image": Path(path).read_bytes(), "name": Path(path).stem, "source": source}


def read_index(location: str) -> dict | None:
    """The dataset's ``index.json`` (LitData writes it last: no index, no complete dataset), None if absent.

    An unreachable endpoint, a missing bucket or refused credentials raise ``OSError`` naming the location.
    """
    if not is_remote(location):
        path = Path(location) / "index.json"
        return json.loads(path.read_text()) if path.is_file() else None
    from litdata.processing.utilities import read_index_file_content
    from litdata.streaming.resolver import _resolve_dir

    try:
        if not _remote_file_exists(location.rstrip("/") + "/index.json"):
            return None
    except Exception as err:  # noqa: BLE001 - boto3 and google-cloud errors alike: name the location
        raise OSError(f"cannot reach {location}: {err}{endpoint_hint(location)}") from err
    return read_index_file_content(_resolve_dir(location))


def _remote_file_exists(url: str) -> bool:
    """HEAD one object. For S3 with a few retries: LitData's own client retries a refused connection 1000 times."""
    if not url.startswith("s3://"):
        from litdata.streaming.fs_provider import _get_fs_provider

        return _get_fs_provider(url).exists(url)
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    bucket, _, key = url[len("s3://") :].partition("/")
    client = boto3.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10))
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket"):
            return False
        raise
    return True


def num_samples(index: dict) -> int:
    return sum(int(chunk["chunk_size"]) for chunk in index.get("chunks", []))


def endpoint_hint(location: str) -> str:
    if not is_remote(location):
        return ""
    return (f" (S3 endpoint: AWS_ENDPOINT_URL={os.environ.get('AWS_ENDPOINT_URL', '<unset: AWS>')}; credentials from"
            " AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws)")


@dataclass
class ShardReport:
    """What ``write_shards`` did: ``complete`` when the location already held this dataset (nothing written)."""

    location: str
    num_samples: int
    complete: bool


def write_shards(
    src_dir: str | Path, out: str, chunk_bytes: str = "64MB", seed: int | None = 0, num_workers: int = 1,
    overwrite: bool = False,
) -> ShardReport:
    """Write the images of ``src_dir`` (recursively) as a LitData dataset at ``out`` (a folder or s3:// / gs:// URL).

    Files are shuffled once with ``seed`` (None keeps the sorted order) so that each chunk mixes the folder's
    sub-folders. LitData writes ``index.json`` last, so a reader never takes a partial dataset for a complete one.
    A location that already holds a complete dataset of the same number of images is kept (``overwrite`` rewrites
    it); a local folder left by an interrupted run resumes from LitData's checkpoints; an interrupted remote write
    starts again (LitData 0.2.76 does not resume into a non-empty bucket prefix).
    """
    _litdata()
    src = Path(src_dir).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"yonos shard: source folder {src} does not exist")
    paths, _ = list_images(src)
    if not paths:
        raise ValueError(f"yonos shard: no readable images in {src} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    if seed is not None:
        paths = [paths[i] for i in torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()]
    out = out if is_remote(out) else str(Path(out).expanduser().resolve())
    index = read_index(out)
    if index is not None and not overwrite:
        if num_samples(index) != len(paths):
            raise FileExistsError(
                f"yonos shard: {out} already holds a dataset of {num_samples(index)} images, not the {len(paths)} of"
                f" {src}: pass --overwrite to replace it, or choose another location"
            )
        return ShardReport(out, len(paths), complete=True)
    # Lists, not tuples: LitData compares the inputs with those in its checkpoint, which went through JSON.
    inputs = [[str(path), path.relative_to(src).as_posix()] for path in paths]
    options = dict(
        fn=encode_sample, inputs=inputs, output_dir=out, chunk_bytes=chunk_bytes, num_workers=num_workers,
        reorder_files=False, mode="overwrite" if (overwrite or index is not None or is_remote(out)) else None,
        use_checkpoint=not is_remote(out), verbose=False,
    )
    failure = _optimize_in_own_group(options) if sys.platform.startswith("linux") else _optimize(options)
    if failure is not None and failure.startswith("ValueError") and "checkpoint" in failure:
        raise ValueError(
            f"yonos shard: {out} holds an unfinished write of other images or settings ({failure}): pass --overwrite"
            " to start it again"
        )
    if failure is not None:
        raise RuntimeError(f"yonos shard: writing {out} failed: {failure}")
    return ShardReport(out, len(paths), complete=False)


def _optimize(options: dict[str, Any]) -> str | None:
    """``litdata.optimize``; the error as text (None on success)."""
    try:
        _litdata().optimize(**options)
    except Exception as err:  # noqa: BLE001 - reported by the caller with the location
        return f"{type(err).__name__}: {err}"
    return None


def _optimize_in_own_group(options: dict[str, Any]) -> str | None:
    """``litdata.optimize`` in a forked child leading its own process group, which is killed afterwards: when a
    worker fails, LitData leaves its helper processes blocked on their queues (they would hold the terminal and
    outlive the command). Ctrl-C reaches this process only; the group goes with it."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_optimize_child, args=(send, {**options, "start_method": "fork"}))
    child.start()
    send.close()
    try:
        failure = receive.recv()
    except EOFError:
        failure = f"the writer process died (exit code {child.exitcode})"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.join()
    return failure


def _optimize_child(send: Any, options: dict[str, Any]) -> None:
    os.setpgid(0, 0)
    send.send(_optimize(options))


# Reading.


try:  # the `cluster` extra; without it this module still imports and names the missing package when used
    from litdata import StreamingDataLoader, StreamingDataset
except ImportError:
    StreamingDataLoader = StreamingDataset = object


class StreamingHRDataset(StreamingDataset):
    """HR training crops streamed from a ``yonos shard`` dataset: decoded and cropped in the loader's workers.

    ``crop(image, generator=...)`` cuts the (3, H, W) image; its generator comes from :func:`crop_generator` with the
    dataset seed, LitData's epoch counter and the global sample index. Defined at module level: spawned workers
    unpickle it.
    """

    def __init__(self, location: str, crop: Callable[..., Tensor], seed: int, **kwargs: Any) -> None:
        _litdata()
        super().__init__(location, shuffle=True, seed=seed, drop_last=True, **kwargs)
        self.crop, self.crop_seed = crop, seed

    def __getitem__(self, index: Any) -> dict[str, Any]:
        sample = super().__getitem__(index)
        position = int(getattr(index, "index", index))
        image = read_rgb(io.BytesIO(sample["image"]))  # (3, H, W)
        hr = self.crop(image, generator=crop_generator(self.crop_seed, self.current_epoch, position))
        return {"hr": hr, "index": torch.tensor(position), "name": sample["name"]}


class ResumingStreamingDataLoader(StreamingDataLoader):
    """LitData's loader, resumed once per ``load_state_dict``.

    LitData keeps replaying the loaded position until a pass runs to StopIteration; Lightning ends an epoch after
    ``len(loader)`` batches without asking for one more, so the pass after a resumed one would replay it again.
    Here the pass after a resumed pass that yielded a batch starts a fresh epoch.
    """

    _resumed_pass_yielded = False

    def __iter__(self):
        if self._resumed_pass_yielded:
            self.restore, self._resumed_pass_yielded = False, False
        resumed = self.restore
        for batch in super().__iter__():
            self._resumed_pass_yielded = self._resumed_pass_yielded or resumed
            yield batch


def shard_loader(dataset: Any, batch_size: int, num_workers: int, pin_memory: bool = False) -> Any:
    """The training loader over :func:`open_shards`' dataset: LitData splits the chunks between ranks and workers
    (equal lengths: what does not fill a batch on every rank is dropped) and its ``state_dict`` puts the position in
    Lightning checkpoints. Workers are not persistent: each epoch's pass must see its new order."""
    _litdata()
    return ResumingStreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)


def open_shards(
    location: str, crop: Callable[..., Tensor], seed: int, key: str = "data.train_shards", cache_dir: str | None = None
):
    """The :class:`StreamingHRDataset` at ``location``; a clear error when it is missing, unfinished or empty.

    Remote chunks are cached in ``cache_dir`` (default: LitData's, ``LITDATA_CACHE_DIR`` where set)."""
    if not location:
        raise ValueError(f"{key} is not set")
    remote = is_remote(location)
    if not remote:
        folder = Path(location).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}: folder {folder} does not exist")
        location = str(folder.resolve())
    index = read_index(location)
    if index is None:
        raise FileNotFoundError(
            f"{key}: {location} has no index.json: not a `yonos shard` dataset, or its writing did not finish"
            f" (rerun `yonos shard SRC {location}`){endpoint_hint(location)}"
        )
    if num_samples(index) == 0:
        raise ValueError(f"{key}: the dataset at {location} holds no samples")
    try:
        return StreamingHRDataset(location, crop, seed, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001
        raise OSError(f"{key}: cannot open {location}: {err}{endpoint_hint(location)}") from err


def main(argv: list[str] | None = None) -> None:
    """``yonos shard SRC_DIR OUT``: write an image folder as a LitData dataset (folder or s3:// / gs:// URL)."""
    parser = command_parser("yonos shard", write_shards.__doc__)
    parser.add_argument("src_dir", help="folder of HR images (searched recursively)")
    parser.add_argument("out", help="output folder, or s3://BUCKET/PREFIX (endpoint and credentials: AWS_* variables)")
    parser.add_argument("--chunk-bytes", default="64MB", help="LitData chunk size (default 64MB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the file-order shuffle (default 0)")
    parser.add_argument("--keep-order", action="store_true", help="keep the sorted file order (no shuffle)")
    parser.add_argument("--workers", type=int, default=1, help="writer processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset already at OUT")
    args = parse(parser, argv)
    report = write_shards(
        args.src_dir, args.out, args.chunk_bytes, None if args.keep_order else args.seed, args.workers, args.overwrite
    )
    state = "already complete, kept" if report.complete else "written"
    print(f"{report.num_samples} images in {report.location}: {state}")
    print(f"train on them with --data.train_shards {args.out}")
