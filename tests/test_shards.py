"""LitData datasets of HR images: `yonos shard` to a local folder and to a real S3 endpoint on localhost (moto's
server over TLS, started here), streaming crops split across ranks and workers, clear errors, and 2-rank (gloo)
training killed and resumed mid-epoch from both locations.

The endpoint speaks TLS because LitData uploads and streams S3 through obstore, which refuses plain http.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import ssl
import threading
from pathlib import Path

import pytest
import torch

litdata = pytest.importorskip("litdata", reason="the cluster extra (litdata) is not installed")

from yonos.batch import crop_hr  # noqa: E402
from yonos.cli import main  # noqa: E402
from yonos.shards import open_shards, read_index, shard_loader, write_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY, CLUSTER = ROOT / "experiments" / "tiny", ROOT / "experiments" / "cluster"


# A real S3 endpoint on 127.0.0.1.


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """moto's S3 server on a random port with a certificate from a throwaway CA; returns the environment a client
    needs (boto3 reads AWS_*; obstore trusts SSL_CERT_FILE). One bucket, ``yonos``."""
    trustme = pytest.importorskip("trustme")
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    server = make_server(
        "127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
        request_handler=MotoRequestHandler, ssl_context=context,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        "AWS_ENDPOINT_URL": f"https://127.0.0.1:{server.server_address[1]}", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_CA_BUNDLE": str(ca_file),
        "SSL_CERT_FILE": str(ca_file),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="yonos")
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def eight_images(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight photos: 2 ranks x batch 2 divide them, so an epoch reads every one."""
    images = tmp_path_factory.mktemp("eight")
    for path in sorted((sample_data / "train").glob("*.png"))[:7]:
        shutil.copy(path, images / path.name)
    shutil.copy(sample_data / "val" / "chelsea.png", images / "chelsea.png")
    return images


def streaming(location: str, seed: int = 0, world: int = 1, rank: int = 0):
    """The training dataset as one rank of ``world`` would open it (without starting a process group)."""
    import tempfile

    from litdata.utilities.env import _DistributedEnv

    cache = tempfile.mkdtemp(prefix="litdata-cache-") if location.startswith("s3://") else None
    dataset = open_shards(location, functools.partial(crop_hr, hr_size=32), seed, cache_dir=cache)
    dataset.distributed_env = _DistributedEnv(world_size=world, global_rank=rank, num_nodes=1)
    return dataset


def raw_samples(location: str) -> dict[str, dict]:
    dataset = litdata.StreamingDataset(location)  # a local folder: read in place
    return {sample["source"]: sample for sample in (dataset[i] for i in range(len(dataset)))}


# Writing.


def test_shard_command_keeps_the_bytes_and_a_rerun_keeps_a_complete_dataset(
    eight_images: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "shards"
    main(["shard", str(eight_images), str(out), "--chunk-bytes", "150KB"])
    assert "8 images" in capsys.readouterr().out
    chunks = sorted(out.glob("chunk-*.bin"))
    assert len(chunks) > 1 and (out / "index.json").is_file() and not (out / ".checkpoints").exists()
    samples = raw_samples(str(out))
    assert sorted(samples) == sorted(p.name for p in eight_images.iterdir())
    for source, sample in samples.items():
        assert sample["image"] == (eight_images / source).read_bytes() and sample["name"] == Path(source).stem
    before = {chunk: chunk.stat().st_mtime_ns for chunk in chunks}
    main(["shard", str(eight_images), str(out), "--chunk-bytes", "150KB"])
    assert "already complete, kept" in capsys.readouterr().out
    assert {chunk: chunk.stat().st_mtime_ns for chunk in sorted(out.glob("chunk-*.bin"))} == before
    (eight_images.parent / "seven").mkdir(exist_ok=True)
    seven = eight_images.parent / "seven"
    for path in sorted(eight_images.iterdir())[:7]:
        shutil.copy(path, seven / path.name)
    with pytest.raises(FileExistsError, match=r"already holds a dataset of 8 images, not the 7 .*--overwrite"):
        write_shards(seven, str(out))
    assert write_shards(seven, str(out), overwrite=True).num_samples == 7 and len(raw_samples(str(out))) == 7


def test_an_interrupted_write_is_never_read_and_a_rerun_resumes_it(
    eight_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yonos.shards as shards

    out, failing = tmp_path / "shards", sorted(eight_images.iterdir())[5]
    encode = shards.encode_sample

    def fail_on_one(item: list[str]) -> dict:
        if item[0] == str(failing):
            raise OSError(f"simulated read failure on {failing.name}")
        return encode(item)

    monkeypatch.setattr(shards, "encode_sample", fail_on_one)  # the forked writer inherits it
    with pytest.raises(RuntimeError, match=r"(?s)yonos shard: writing .*shards failed: .*simulated read failure"):
        write_shards(eight_images, str(out), chunk_bytes="1KB", seed=None)  # one image per chunk, sorted order
    monkeypatch.setattr(shards, "encode_sample", encode)
    written = {chunk.name: chunk.stat().st_mtime_ns for chunk in out.glob("chunk-*.bin")}
    assert written and not (out / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="has no index.json.*did not finish"):
        open_shards(str(out), functools.partial(crop_hr, hr_size=32), 0)
    write_shards(eight_images, str(out), chunk_bytes="1KB", seed=None)
    assert sorted(raw_samples(str(out))) == sorted(p.name for p in eight_images.iterdir())
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in written.items())  # kept, not rewritten


def test_missing_empty_and_unreachable_locations_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crop = functools.partial(crop_hr, hr_size=32)
    with pytest.raises(FileNotFoundError, match=r"data.train_shards: folder .*nowhere does not exist"):
        open_shards(str(tmp_path / "nowhere"), crop, 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "index.json").write_text(json.dumps({"chunks": [], "config": {}}))
    with pytest.raises(ValueError, match="holds no samples"):
        open_shards(str(tmp_path / "empty"), crop, 0)
    with pytest.raises(FileNotFoundError, match="yonos shard: source folder"):
        write_shards(tmp_path / "no_images_here", str(tmp_path / "out"))
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"https://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    with pytest.raises(OSError, match=rf"cannot reach s3://yonos/data.*AWS_ENDPOINT_URL=https://127.0.0.1:{port}"):
        open_shards("s3://yonos/data", crop, 0)


def test_s3_dataset_missing_prefix_is_named(s3_endpoint: dict[str, str]) -> None:
    with pytest.raises(FileNotFoundError, match=r"data.train_shards: s3://yonos/absent has no index.json"):
        open_shards("s3://yonos/absent", functools.partial(crop_hr, hr_size=32), 0)
    assert read_index("s3://yonos/absent") is None


# Reading: ranks, workers, epochs.


def epoch_batches(dataset, workers: int, epochs: int) -> list[list[list[int]]]:
    loader = shard_loader(dataset, batch_size=2, num_workers=workers)
    return [[batch["index"].tolist() for batch in loader] for _ in range(epochs)]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_ranks_by_two_workers_read_every_sample_once_per_epoch(
    where: str, eight_images: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    location = str(tmp_path / "shards") if where == "local" else f"s3://yonos/split-{os.getpid()}"
    if where == "s3":
        request.getfixturevalue("s3_endpoint")
    write_shards(eight_images, location, chunk_bytes="100KB")
    per_rank = [epoch_batches(streaming(location, world=2, rank=rank), workers=2, epochs=2) for rank in (0, 1)]
    assert [len(epochs[0]) for epochs in per_rank] == [2, 2]  # equal lengths
    for epoch in (0, 1):
        seen = [i for epochs in per_rank for batch in epochs[epoch] for i in batch]
        assert sorted(seen) == list(range(8))  # every sample once, none twice
    assert per_rank[0][0] != per_rank[0][1]  # reshuffled every epoch
    dataset = streaming(location)
    dataset.set_epoch(3)
    first, again = dataset[5], dataset[5]
    assert first["hr"].shape == (3, 32, 32) and torch.equal(first["hr"], again["hr"])  # crop: f(seed, epoch, sample)
    dataset.set_epoch(4)
    assert not torch.equal(first["hr"], dataset[5]["hr"])


def test_odd_counts_keep_equal_rank_lengths_without_duplicates(eight_images: Path, tmp_path: Path) -> None:
    seven = tmp_path / "seven"
    seven.mkdir()
    for path in sorted(eight_images.iterdir())[:7]:
        shutil.copy(path, seven / path.name)
    write_shards(seven, str(tmp_path / "shards"), chunk_bytes="150KB")
    per_rank = [epoch_batches(streaming(str(tmp_path / "shards"), world=2, rank=r), 1, 1)[0] for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) >= 1
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))


def test_a_resumed_loader_continues_then_starts_the_next_epoch_afresh(eight_images: Path, tmp_path: Path) -> None:
    """As Lightning drives it: an epoch ends after len(loader) batches, without a call that meets StopIteration."""
    location = str(tmp_path / "shards")
    write_shards(eight_images, location, chunk_bytes="150KB")
    uninterrupted = sum(epoch_batches(streaming(location), workers=0, epochs=3), [])
    loader = shard_loader(streaming(location), batch_size=2, num_workers=0)
    batches = iter(loader)
    seen = [next(batches)["index"].tolist() for _ in range(3)]
    state = loader.state_dict()
    resumed = shard_loader(streaming(location), batch_size=2, num_workers=0)
    resumed.load_state_dict(state)
    for remaining in (len(resumed) - 3, len(resumed), len(resumed)):
        batches = iter(resumed)
        seen += [next(batches)["index"].tolist() for _ in range(remaining)]
    assert len(uninterrupted) == 12 and seen == uninterrupted


# Two ranks (gloo), killed and resumed.


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_ranks_killed_and_resumed_continue_from_the_same_position(
    where: str, eight_images: Path, sample_data: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from test_distributed import batches_seen, clean_env, probes, run, start, tiny_args, wait_for

    extra_env = {"LITDATA_CACHE_DIR": str(tmp_path / "cache")}
    location = str(tmp_path / "shards")
    if where == "s3":
        extra_env.update(request.getfixturevalue("s3_endpoint"))
        location = f"s3://yonos/resume-{os.getpid()}"
    main(["shard", str(eight_images), location, "--chunk-bytes", "150KB"])
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n"
        "    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true, every_n_train_steps: 3, save_top_k: -1}}\n"
        "    - {class_path: rank_probe.RankProbe}\n"
    )
    base = [
        "-m", "yonos", "fit", "-c", str(TINY / "teacher_x2.yaml"), "-c", str(CLUSTER / "ddp.yml"), "-c", str(callbacks),
        "--trainer.devices", "2", "--data.train_shards", location, "--data.train_repeat", "1",
        "--trainer.limit_val_batches", "0",
        *[a for a in tiny_args(tmp_path, sample_data) if a != "--trainer.callbacks+=rank_probe.RankProbe"],
    ]
    log = tmp_path / "killed.log"
    killed = start([*base, "--trainer.max_steps", "1000"], clean_env(tmp_path / "probe1", **extra_env), log)
    saved = [tmp_path / "probe1" / f"saved-step3-rank{rank}.json" for rank in (0, 1)]
    wait_for(lambda: all(p.exists() for p in saved) and batches_seen(tmp_path / "probe1") > 4, killed, log)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    resumed_env = clean_env(tmp_path / "probe2", **extra_env)
    run([*base, "--trainer.max_steps", "8", "--ckpt_path", "last"], resumed_env, tmp_path / "resumed.log")
    before, after = probes(tmp_path / "probe1"), probes(tmp_path / "probe2")
    step = after[0]["start"]["global_step"]
    assert step > 0 and step % 3 == 0 and [r["end"]["global_step"] for r in after] == [8, 8]
    # What an uninterrupted run reads on each rank: 4 epochs of 2 batches (same loader settings: 0 workers).
    expected = [sum(epoch_batches(streaming(location, world=2, rank=r), 0, 4), []) for r in (0, 1)]
    for rank in (0, 1):
        assert before[rank]["train_batches"] == expected[rank][: len(before[rank]["train_batches"])]
        assert after[rank]["train_batches"] == expected[rank][step:8]  # continues at the batch after the checkpoint
    for epoch in range(4):  # every sample once per epoch across the two ranks
        assert sorted(i for r in (0, 1) for batch in expected[r][2 * epoch : 2 * epoch + 2] for i in batch) == list(range(8))
