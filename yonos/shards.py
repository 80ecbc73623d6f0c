"""WebDataset-format tar shards of HR training images: ``yonos shard`` writes them from an image folder;
:class:`ShardedHRDataset` + :class:`ShardSampler` read HR crops from them, split by data-parallel rank (the
sampler) and DataLoader worker (the DataLoader itself). No Lightning module logic here.

Format: plain POSIX tar, WebDataset's convention (members ``<key>.<ext>`` grouped by key): the original encoded
image as ``<key>.png`` / ``.jpg`` / ... and ``<key>.json`` with its name and source path. The standard library
writes and reads it, ``tar tf`` lists it and the ``webdataset`` package streams it unchanged; LitData's chunks would
need LitData on both ends. Samples are read by member offset (``os.pread``) rather than streamed, so the reader
keeps Lightning's sampler contract: ``set_epoch``, equal per-rank lengths, per-worker split by the DataLoader.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from yonos.data import SRBatch, crop_hr
from yonos.images import IMAGE_EXTENSIONS, list_images, to_rgb8

SHARD_NAME = "shard-{:06d}.tar"
INDEX_NAME = "shards.json"
KEY_DIGITS = 9


# Writing.


@dataclass
class ShardReport:
    """What ``write_shards`` did: shards (re)written, shards already complete and kept, stale shards removed."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    num_samples: int = 0


def _members(paths: list[Path], root: Path, first_key: int) -> list[tuple[str, Path | bytes]]:
    """The tar members of one shard, in order: ``<key><ext>`` (the file as is) then ``<key>.json``."""
    members: list[tuple[str, Path | bytes]] = []
    for offset, path in enumerate(paths):
        key = f"{first_key + offset:0{KEY_DIGITS}d}"
        meta = json.dumps({"name": path.stem, "source": path.relative_to(root).as_posix()}, sort_keys=True)
        members += [(f"{key}{path.suffix.lower()}", path), (f"{key}.json", meta.encode())]
    return members


def _listing(path: Path) -> list[tuple[str, int]] | None:
    """(name, size) of every member of a readable tar, None if the file is missing or not a complete tar."""
    try:
        with tarfile.open(path, "r:") as tar:
            return [(member.name, member.size) for member in tar.getmembers()]
    except (OSError, tarfile.TarError):
        return None


def _write_tar(path: Path, members: list[tuple[str, Path | bytes]]) -> None:
    """Write a tar next to ``path`` and rename it into place: readers never see a partial shard."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            with tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, payload in members:
                    data = payload.read_bytes() if isinstance(payload, Path) else payload
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: same input, same bytes
                    tar.addfile(info, io.BytesIO(data))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_json_atomic(path: Path, content: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, path)


def write_shards(src_dir: str | Path, out_dir: str | Path, shard_size: int, seed: int | None = 0) -> ShardReport:
    """Pack the images of ``src_dir`` (recursively) into ``out_dir/shard-000000.tar``, ... of ``shard_size`` samples.

    Files are shuffled once with ``seed`` (None keeps the sorted order) so that each shard mixes the folder's
    sub-folders. A shard whose members already match (names and sizes) is kept, so a rerun after an interruption
    writes only what is missing; shards left over from a larger earlier run are removed. ``shards.json`` lists
    the shards and their sample counts.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    src, out = Path(src_dir).expanduser(), Path(out_dir).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    paths, _ = list_images(src)
    if not paths:
        raise ValueError(f"no readable images in {src} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    if seed is not None:
        paths = [paths[i] for i in torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()]
    out.mkdir(parents=True, exist_ok=True)
    report, index = ShardReport(num_samples=len(paths)), []
    for number, start in enumerate(range(0, len(paths), shard_size)):
        members = _members(paths[start : start + shard_size], src, start)
        path = out / SHARD_NAME.format(number)
        expected = [(name, p.stat().st_size if isinstance(p, Path) else len(p)) for name, p in members]
        if _listing(path) == expected:
            report.kept.append(path)
        else:
            _write_tar(path, members)
            report.written.append(path)
        index.append({"name": path.name, "count": len(members) // 2})
    names = {entry["name"] for entry in index}
    for stale in sorted(out.glob("shard-*.tar")):
        if stale.name not in names:
            stale.unlink()
            report.removed.append(stale)
    _write_json_atomic(out / INDEX_NAME, {"shard_size": shard_size, "num_samples": len(paths), "shards": index})
    return report


# Reading.


def expand_braces(pattern: str) -> list[str]:
    """Expand WebDataset's numeric ranges: ``shard-{000000..000002}.tar`` -> three names (zero padding kept)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        if "{" in pattern or "}" in pattern:
            raise ValueError(f"data.train_shards: only numeric ranges like {{000000..000009}} are supported: {pattern}")
        return [pattern]
    first, last = match.group(1), match.group(2)
    if int(first) > int(last):
        raise ValueError(f"data.train_shards: empty range {{{first}..{last}}} in {pattern}")
    width = len(first) if first.startswith("0") or len(first) == len(last) else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for n in range(int(first), int(last) + 1) for name in expand_braces(f"{head}{n:0{width}d}{tail}")]


def split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's grouping rule: the key is the path up to the first dot of the file name, the rest the extension."""
    folder, _, base = member_name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


@dataclass(frozen=True)
class ShardSample:
    """Where one sample's image lies: shard file number, byte offset and size of the image member."""

    shard: int
    offset: int
    size: int
    key: str


def index_shard(path: Path, shard: int) -> list[ShardSample]:
    """The samples of one shard, in tar order, from its headers only (image bytes are not read)."""
    images: dict[str, ShardSample] = {}
    keys: dict[str, None] = {}  # insertion-ordered set
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, extension = split_key(member.name)
            keys.setdefault(key)
            if f".{extension}" in IMAGE_EXTENSIONS and key not in images:
                images[key] = ShardSample(shard, member.offset_data, member.size, key)
    missing = [key for key in keys if key not in images]
    if missing:
        raise ValueError(f"data.train_shards: {path} has samples without an image member: {missing[:5]}")
    return [images[key] for key in keys]


def resolve_shards(spec: str, key: str = "data.train_shards") -> list[Path]:
    """The shard files named by a folder (its ``shards.json``, else its ``*.tar``), a brace pattern or one file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        index_file = path / INDEX_NAME
        if index_file.is_file():
            paths = [path / entry["name"] for entry in json.loads(index_file.read_text())["shards"]]
        else:
            paths = sorted(path.glob("*.tar"))
    else:
        paths = [Path(name).expanduser() for name in expand_braces(spec)]
    if not paths:
        raise ValueError(f"{key}: no .tar shards in {path}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{key}: {len(missing)} shard(s) do not exist: {missing[:5]}")
    return paths


def crop_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one training crop: a function of (seed, epoch, sample), so crops survive resumes and do
    not depend on the number of ranks or workers."""
    entropy = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


class ShardedHRDataset(Dataset):
    """HR training crops from WebDataset-format shards, read by member offset.

    Items are ``(epoch, index)`` pairs (what :class:`ShardSampler` yields): the crop and flip are drawn from
    :func:`crop_generator`, so they depend on neither the rank, the worker nor a resume.
    """

    def __init__(self, paths: list[Path], hr_size: int, seed: int) -> None:
        self.paths = list(paths)
        self.samples = [sample for shard, path in enumerate(self.paths) for sample in index_shard(path, shard)]
        self.shard_sizes = np.bincount([s.shard for s in self.samples], minlength=len(self.paths)).tolist()
        self.hr_size, self.seed = hr_size, seed
        self._descriptors: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptors": {}}  # file descriptors do not cross process boundaries

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index`` (positionless reads: safe in forked DataLoader workers)."""
        if self._pid != os.getpid():
            self._descriptors, self._pid = {}, os.getpid()
        sample = self.samples[index]
        if sample.shard not in self._descriptors:
            self._descriptors[sample.shard] = os.open(self.paths[sample.shard], os.O_RDONLY)
        return os.pread(self._descriptors[sample.shard], sample.size, sample.offset)

    def __getitem__(self, item: tuple[int, int]) -> SRBatch:
        """``name`` is the sample's WebDataset key (training does not write images)."""
        epoch, index = item
        with Image.open(io.BytesIO(self.read_bytes(index))) as image:
            array = to_rgb8(image)
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        hr = crop_hr(image, self.hr_size, crop_generator(self.seed, epoch, index))
        return {"hr": hr, "index": torch.tensor(index), "name": self.samples[index].key}

    def __del__(self) -> None:
        for descriptor in getattr(self, "_descriptors", {}).values():
            os.close(descriptor)


class ShardSampler(DistributedSampler):
    """The epoch's order over sharded samples, for one data-parallel rank.

    Each epoch (``seed + epoch``, the same on every rank): shards in a random order, samples shuffled within each
    shard, ``repeat`` passes. Rank r takes a contiguous 1/world of it (so it reads about 1/world of the shards),
    padded like ``DistributedSampler`` so that every rank has the same length. The DataLoader splits it between
    its workers batch by batch. ``skip = (epoch, batches)`` drops the first batches of that epoch: a resumed run
    continues where the checkpoint stopped. Being a ``DistributedSampler``, Lightning keeps it and calls ``set_epoch``.
    """

    def __init__(
        self, shard_sizes: list[int], num_replicas: int, rank: int, seed: int, batch_size: int, repeat: int = 1,
        skip: tuple[int, int] | None = None,
    ) -> None:
        self.shard_sizes, self.batch_size, self.repeat = list(shard_sizes), batch_size, repeat
        super().__init__(range(sum(shard_sizes) * repeat), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = skip  # (epoch, batches)

    def epoch_order(self, epoch: int) -> list[int]:
        """Every sample index of the epoch, in reading order (before the split between ranks)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        starts = np.cumsum([0, *self.shard_sizes]).tolist()
        order: list[int] = []
        for _ in range(self.repeat):
            for shard in torch.randperm(len(self.shard_sizes), generator=generator).tolist():
                within = torch.randperm(self.shard_sizes[shard], generator=generator)
                order += (within + starts[shard]).tolist()
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)
        order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]  # pad as DistributedSampler does
        mine = order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
        if self.skip is not None and self.skip[0] == self.epoch:
            mine = mine[self.skip[1] * self.batch_size :]
            self.skip = None  # only the epoch the checkpoint interrupted
        return iter([(self.epoch, index) for index in mine])


def main(argv: list[str] | None = None) -> None:
    """``yonos shard SRC_DIR OUT_DIR --shard-size N``: write WebDataset-format tar shards of an image folder."""
    parser = argparse.ArgumentParser(prog="yonos shard", description=write_shards.__doc__)
    parser.add_argument("src_dir", help="folder of HR images (searched recursively)")
    parser.add_argument("out_dir", help="output folder of shard-000000.tar, ... and shards.json")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the file-order shuffle (default 0)")
    parser.add_argument("--keep-order", action="store_true", help="keep the sorted file order (no shuffle)")
    args = parser.parse_args(argv)
    report = write_shards(args.src_dir, args.out_dir, args.shard_size, None if args.keep_order else args.seed)
    total = len(report.written) + len(report.kept)
    print(f"{report.num_samples} images in {total} shards in {args.out_dir}: {len(report.written)} written, "
          f"{len(report.kept)} already complete, {len(report.removed)} stale removed")
    print(f"train on them with --data.train_shards {args.out_dir}")
