"""Scaling out on CPU processes (gloo): the real `yonos` CLI with the experiments/cluster fragments, launched as
subprocesses (torchrun, Lightning's own launcher, two "nodes" on the loopback address); sharded data (LitData); global batch
arithmetic; resume after SIGKILL; a checkpoint on SIGTERM; distributed prediction.

Each multi-process run records what the assertions need through tests/distributed_scripts/rank_probe.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from yonos.callbacks import GlobalBatchSize, accumulation_steps
from yonos.cli import main
from yonos.cli import run as run_cli
from yonos.data import PaddedEvaluationSampler

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "distributed_scripts"
TINY, CLUSTER = ROOT / "experiments" / "tiny", ROOT / "experiments" / "cluster"
TIMEOUT_S = 240
LAUNCHED: list[subprocess.Popen] = []


# Launching.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(probe_dir: Path, **extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (the tests may run under SLURM or torchrun)."""
    launcher = ("SLURM_", "TORCHELASTIC_", "PL_", "MASTER_", "GROUP_")
    ranks = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher) and k not in ranks}
    env.update(
        PYTHONPATH=os.pathsep.join([str(SCRIPTS), str(ROOT)]), HF_HUB_OFFLINE="1",
        YONOS_OFFLINE="1", OMP_NUM_THREADS="1", YONOS_PROBE_DIR=str(probe_dir), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A new process group, so that a timeout can end the whole launch (Lightning's rank-1 child included)."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    LAUNCHED.append(process)
    return process


@pytest.fixture(autouse=True)
def _end_launched_process_groups():
    """Whatever a test does, the process groups it started do not outlive it."""
    yield
    while LAUNCHED:
        process = LAUNCHED.pop()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def finish(process: subprocess.Popen, log: Path, timeout: float = TIMEOUT_S) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"timed out after {timeout} s:\n{log.read_text()[-3000:]}")


def run(args: list[str], env: dict[str, str], log: Path) -> None:
    code = finish(start(args, env, log), log)
    assert code == 0, log.read_text()[-4000:]


def tiny_args(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=rank_probe.RankProbe",
        "--data.train_dir", str(data / "train"), "--data.val_dir", str(data / "val"), "--data.hr_size", "32",
        "--data.batch_size", "2", *extra,
    ]


def probes(probe_dir: Path, fn: str = "fit") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(probe_dir.glob(f"{fn}-rank*.json"))]


@pytest.fixture(scope="module")
def data(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos with FIVE validation images (the four held-out photos and one more): an odd count, which 2
    ranks cannot split evenly."""
    root = tmp_path_factory.mktemp("data3")
    shutil.copytree(sample_data / "train", root / "train")
    shutil.copytree(sample_data / "val", root / "val")
    shutil.copy(sample_data / "train" / "coffee.png", root / "val" / "coffee.png")
    return root


@pytest.fixture(scope="module")
def cli_checkpoint(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x2 teacher checkpoint written by the CLI after one step (the CLI rebuilds models from its hparams)."""
    out = tmp_path_factory.mktemp("cli_teacher")
    fit = ["fit", "-c", str(TINY / "teacher_x2.yaml"), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    run_cli([*fit, *[a for a in tiny_args(out, data) if a != "--trainer.callbacks+=rank_probe.RankProbe"]])
    return out / "checkpoints" / "last.ckpt"


# Global batch size.


def test_accumulation_keeps_the_global_batch_whatever_the_device_count() -> None:
    assert [accumulation_steps(64, devices, 4) for devices in (1, 2, 4, 8, 16)] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match=r"global_batch_size = 64 .*data.batch_size = 8 .*16 data-parallel.*trainer.num_nodes"):
        accumulation_steps(64, 16, 8)


def test_global_batch_size_callback_sets_accumulation_and_names_conflicts() -> None:
    def trainer(replicas: int, accumulate: int = 1) -> SimpleNamespace:
        strategy = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": replicas, "rank": 0})
        return SimpleNamespace(datamodule=SimpleNamespace(batch_size=2), strategy=strategy, accumulate_grad_batches=accumulate)

    automatic, manual = SimpleNamespace(automatic_optimization=True), SimpleNamespace(automatic_optimization=False)
    two_nodes = trainer(4)
    GlobalBatchSize(64).setup(two_nodes, automatic, "fit")
    assert two_nodes.accumulate_grad_batches == 8
    with pytest.raises(ValueError, match="trainer.accumulate_grad_batches = 3 conflicts"):
        GlobalBatchSize(64).setup(trainer(4, accumulate=3), automatic, "fit")
    with pytest.raises(ValueError, match="manual optimisation"):
        GlobalBatchSize(64).setup(trainer(4), manual, "fit")
    GlobalBatchSize(8).setup(trainer(4), manual, "fit")  # no accumulation needed: fine


@pytest.mark.parametrize("fragment", sorted(CLUSTER.glob("*.yml")), ids=lambda p: p.name)
def test_each_cluster_fragment_layers_on_a_stage_yaml(fragment: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(TINY / "teacher_x2.yaml"), "-c", str(fragment), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "ModelCheckpoint" in printed and "yonos.modules.TeacherModule" in printed


def test_fsdp_sharding_refuses_ema_and_tensor_parallelism() -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from yonos.modules.common import shard_trainable

    def module(tensor_parallel: int, callbacks: list) -> SimpleNamespace:
        mesh = {"tensor_parallel": SimpleNamespace(size=lambda: tensor_parallel)}
        return SimpleNamespace(device_mesh=mesh, trainer=SimpleNamespace(callbacks=callbacks))

    with pytest.raises(ValueError, match="EMAWeightAveraging cannot average FSDP-sharded weights"):
        shard_trainable(module(1, [EMAWeightAveraging()]), [])
    with pytest.raises(ValueError, match="tensor_parallel_size must be 1"):
        shard_trainable(module(2, []), [])
    shard_trainable(SimpleNamespace(device_mesh=None), [])  # DDP, one device: nothing to do


# Precision, activation checkpointing and gradient accumulation from yaml, in every stage.


@pytest.mark.parametrize("stage", ["teacher", "distill", "decoder"])
def test_every_stage_trains_with_bf16_checkpointing_and_accumulation(
    stage: str, data: Path, teacher_ckpt: Path, tmp_path: Path
) -> None:
    config, extra, network = {
        "teacher": ("teacher_x2.yaml", [], lambda m: m.denoiser.unet.is_gradient_checkpointing),
        "distill": (
            "distill_x2_to_x4.yaml", ["--model.init_args.teacher_ckpt", str(teacher_ckpt)],
            lambda m: m.student.unet.is_gradient_checkpointing,
        ),
        "decoder": (
            "decoder_finetune.yaml", ["--model.init_args.denoiser_ckpt", str(teacher_ckpt), "--data.scales", "[2]"],
            lambda m: m.codec.vae.decoder.gradient_checkpointing,
        ),
    }[stage]
    args = ["fit", "-c", str(TINY / config), "-c", str(CLUSTER / "memory.yml"), *tiny_args(tmp_path, data, *extra)]
    args = [a for a in args if a != "--trainer.callbacks+=rank_probe.RankProbe"]
    cli = run_cli([*args, "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"])
    assert cli.trainer.precision == "bf16-mixed" and network(cli.model)
    assert cli.trainer.global_step == 1 and cli.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2


# Evaluation across ranks (sharded training data: tests/test_shards.py).


def test_evaluation_padding_is_flagged_not_counted() -> None:
    shares = [list(PaddedEvaluationSampler(range(5), num_replicas=2, rank=rank)) for rank in (0, 1)]
    assert [len(share) for share in shares] == [3, 3]  # equal: no rank waits for another
    assert sorted(index for share in shares for index, valid in share if valid) == [0, 1, 2, 3, 4]
    assert [valid for share in shares for _, valid in share].count(False) == 1


# Multi-process runs.


@pytest.mark.slow
def test_ddp_under_torchrun_ranks_draw_differently_and_stay_in_sync(data: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    args = [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "yonos", "fit",
        "-c", str(TINY / "teacher_x2_realesrgan.yaml"), "-c", str(CLUSTER / "ddp.yml"), "-c", str(CLUSTER / "global_batch.yml"),
        "--trainer.callbacks.global_batch_size", "8",
        *tiny_args(tmp_path, data, "--trainer.devices", "2", "--trainer.max_steps", "2"),
        "--trainer.val_check_interval", "4", "--data.train_repeat", "3",
    ]
    run(args, clean_env(probe), tmp_path / "log.txt")
    ranks = probes(probe)
    assert [r["global_rank"] for r in ranks] == [0, 1] and {r["environment"] for r in ranks} == {"TorchElasticEnvironment"}
    assert all(r["start"]["accumulate_grad_batches"] == 2 for r in ranks)  # 8 = 2 ranks x batch 2 x 2
    # Each rank its own data and its own degradation stream (seed + rank) ...
    assert [r["degradation"]["seed"] for r in ranks] == [0, 1]
    assert ranks[0]["degradation"]["next_draw"] != ranks[1]["degradation"]["next_draw"]
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]
    # ... one model: identical weights and EMA after the optimizer steps, identical reduced metrics.
    assert ranks[0]["end"]["global_step"] == 2
    assert ranks[0]["end"]["trainable"] == ranks[1]["end"]["trainable"] and ranks[0]["end"]["ema"] == ranks[1]["end"]["ema"]
    assert ranks[0]["validation"] == ranks[1]["validation"]
    # Five validation images on two ranks: the padding duplicate is not counted, so one process agrees.
    single = run_cli([
        "validate", "-c", str(TINY / "teacher_x2_realesrgan.yaml"), "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt"),
        *[a for a in tiny_args(tmp_path / "single", data) if a != "--trainer.callbacks+=rank_probe.RankProbe"],
    ])
    for key in ("val/psnr", "val/ssim"):
        assert float(single.trainer.callback_metrics[key]) == pytest.approx(ranks[0]["validation"][-1][key], abs=1e-4)


@pytest.mark.slow
def test_two_nodes_on_the_loopback_address_split_the_shards(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("litdata", reason="the cluster extra (litdata) is not installed")
    main(["shard", str(data / "train"), str(tmp_path / "shards"), "--chunk-bytes", "150KB"])  # 13 samples
    probe, env = tmp_path / "probe", clean_env(tmp_path / "probe")
    args = [
        "-m", "yonos", "fit", "-c", str(TINY / "teacher_x2.yaml"), "-c", str(CLUSTER / "ddp.yml"),
        "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
        "--data.train_shards", str(tmp_path / "shards"), "--data.train_repeat", "1",
    ]
    logs = [tmp_path / f"node{n}.log" for n in (0, 1)]
    nodes = [start([*args, *tiny_args(tmp_path / f"node{n}", data)], {**env, "NODE_RANK": str(n)}, logs[n]) for n in (0, 1)]
    for process, log in zip(nodes, logs):
        assert finish(process, log) == 0, log.read_text()[-3000:]
    ranks = probes(probe)
    assert [(r["node_rank"], r["global_rank"], r["world_size"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]
    assert ranks[0]["end"]["trainable"] == ranks[1]["end"]["trainable"]
    # 13 samples on 2 ranks: each rank reads its own share, and the ranks never read the same sample in an epoch.
    assert [len(r["train_batches"]) for r in ranks] == [2, 2]
    for epoch in (0, 1):
        read = [i for r in ranks for i in r["train_batches"][epoch]]
        assert len(read) == 4 and len(set(read)) == 4 and set(read) <= set(range(13))


@pytest.mark.slow
def test_slurm_script_runs_under_srun_and_resumes_from_the_newest_checkpoint(
    data: Path, cli_checkpoint: Path, tmp_path: Path
) -> None:
    """experiments/cluster/slurm.sbatch as SLURM runs it, with a stand-in srun (two tasks on this machine), as a
    requeued job: ROOT already holds an older hpc checkpoint and a newer last.ckpt (step 1)."""
    script = ROOT / "experiments" / "cluster" / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    (tmp_path / "bin").mkdir()
    shutil.copy(SCRIPTS / "srun", tmp_path / "bin" / "srun")
    (tmp_path / "bin" / "srun").chmod(0o755)
    slurm = {
        "PATH": os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "yonos", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "1",
        "CONFIG": str(TINY / "teacher_x2.yaml"), "ROOT": str(tmp_path),
    }
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(cli_checkpoint, tmp_path / "hpc_ckpt_1.ckpt")
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (time.time() - 60, time.time() - 60))
    shutil.copy(cli_checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    args = [
        "--trainer.callbacks.global_batch_size", "8",
        *tiny_args(tmp_path, data, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0"),
    ]
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", str(script), *args], cwd=ROOT, env={**clean_env(tmp_path / "probe"), **slurm}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    LAUNCHED.append(process)
    assert finish(process, log) == 0, log.read_text()[-3000:]
    ranks = probes(tmp_path / "probe")
    assert [r["environment"] for r in ranks] == ["SLURMEnvironment"] * 2 and [r["global_rank"] for r in ranks] == [0, 1]
    assert all(r["start"]["accumulate_grad_batches"] == 2 for r in ranks)  # global_batch.yml: 8 = 2 tasks x batch 2 x 2
    assert [r["start"]["global_step"] for r in ranks] == [1, 1] and ranks[0]["end"]["global_step"] == 3
    # Lightning's restore note stays off the console (yonos.cli.QUIET_ON_CONSOLE), in the run's console.log.
    restored = "Restoring states from the checkpoint path at " + str(tmp_path / "checkpoints" / "last.ckpt")
    assert restored in (tmp_path / "console.log").read_text() and restored not in log.read_text()


def fsdp_unavailable() -> str | None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "torch.distributed with the gloo backend is not available"
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return "this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(fsdp_unavailable() is not None, reason=str(fsdp_unavailable()))
def test_fsdp_shards_the_student_and_replicates_the_teacher(data: Path, teacher_ckpt: Path, tmp_path: Path) -> None:
    from yonos.checkpoints import load_stage_checkpoint

    probe = tmp_path / "probe"
    args = [
        "-m", "yonos", "fit", "-c", str(TINY / "distill_x2_to_x4.yaml"), "-c", str(CLUSTER / "fsdp.yml"),
        "--trainer.strategy.init_args.data_parallel_size", "2", "--model.init_args.teacher_ckpt", str(teacher_ckpt),
        *tiny_args(tmp_path, data, "--trainer.devices", "2", "--trainer.max_steps", "2"),
        "--trainer.val_check_interval", "2", "--data.train_repeat", "2",
    ]
    run(args, clean_env(probe), tmp_path / "log.txt")
    ranks = probes(probe)
    assert {r["strategy"] for r in ranks} == {"ModelParallelStrategy"}
    for rank in ranks:
        end = rank["end"]
        assert end["optimised_modules"] == ["student"] and end["optimised_types"] == ["DTensor"]  # sharded UNet only
        assert end["frozen_types"] == ["Parameter"]  # teacher and VAE: whole tensors on every rank
    assert sum(r["end"]["optimised_local_numel"] for r in ranks) == ranks[0]["end"]["optimised_numel"]
    assert ranks[0]["validation"] == ranks[1]["validation"]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2 and not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert load_stage_checkpoint(tmp_path / "checkpoints" / "last.ckpt").scale == 4  # the next stage can read it


@pytest.mark.slow
def test_distributed_predict_writes_each_image_once(cli_checkpoint: Path, tmp_path: Path) -> None:
    from yonos.images import save_image_atomic

    for i in range(5):
        save_image_atomic(torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(i)), tmp_path / "lr" / f"img{i}.png")
    probe = tmp_path / "probe"
    args = [
        "-m", "yonos", "predict", "-c", str(TINY / "teacher_x2.yaml"), "-c", str(CLUSTER / "ddp.yml"), "--trainer.devices", "2",
        "--ckpt_path", str(cli_checkpoint), "--data.predict_dir", str(tmp_path / "lr"),
        "--trainer.callbacks+=rank_probe.RankProbe",
        "--trainer.default_root_dir", str(tmp_path / "out"), "--trainer.logger.init_args.save_dir", str(tmp_path / "out"),
    ]
    run(args, clean_env(probe), tmp_path / "log.txt")
    per_rank = [r["predicted"] for r in probes(probe, "predict")]
    assert sorted(per_rank[0] + per_rank[1]) == [f"img{i}" for i in range(5)]  # each once, none twice
    assert sorted(p.name for p in (tmp_path / "out" / "predict").iterdir()) == [f"img{i}.png" for i in range(5)]


# Fault tolerance.


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"condition not reached:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def batches_seen(probe: Path) -> int:
    try:
        return len(json.loads((probe / "fit-rank0.json").read_text())["train_batches"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_restores_step_optimizer_ema_and_data_position(sample_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("litdata", reason="the cluster extra (litdata) is not installed")
    from test_shards import epoch_batches, streaming

    main(["shard", str(sample_data / "train"), str(tmp_path / "shards"), "--chunk-bytes", "150KB"])
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n"
        "    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true, every_n_train_steps: 3, save_top_k: -1}}\n"
        "    - {class_path: yonos.callbacks.TrainableEMA, init_args: {decay: 0.9}}\n"
        "    - {class_path: rank_probe.RankProbe}\n"
    )
    base = [
        "-m", "yonos", "fit", "-c", str(TINY / "teacher_x2_realesrgan.yaml"), "-c", str(callbacks),
        "--data.train_shards", str(tmp_path / "shards"), "--data.train_repeat", "1", "--trainer.limit_val_batches", "0",
        *[a for a in tiny_args(tmp_path, sample_data) if a != "--trainer.callbacks+=rank_probe.RankProbe"],
    ]
    log = tmp_path / "killed.log"
    killed = start([*base, "--trainer.max_steps", "1000"], clean_env(tmp_path / "probe1"), log)
    checkpointed = tmp_path / "probe1" / "saved-step3-rank0.json"
    wait_for(lambda: checkpointed.exists() and batches_seen(tmp_path / "probe1") > 4, killed, log)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    run([*base, "--trainer.max_steps", "8", "--ckpt_path", "last"], clean_env(tmp_path / "probe2"), tmp_path / "resumed.log")
    resumed = probes(tmp_path / "probe2")[0]
    step = resumed["start"]["global_step"]
    assert step > 0 and step % 3 == 0  # the last periodic checkpoint before the kill
    assert resumed["start"] == json.loads((tmp_path / "probe1" / f"saved-step{step}-rank0.json").read_text())
    # Sharded data continue with the batch after the checkpoint, as the uninterrupted run read them.
    uninterrupted = sum(epoch_batches(streaming(str(tmp_path / "shards")), workers=0, epochs=3), [])  # 3 batches each
    killed_run = json.loads((tmp_path / "probe1" / "fit-rank0.json").read_text())["train_batches"]
    assert killed_run == uninterrupted[: len(killed_run)]
    assert resumed["train_batches"] == uninterrupted[step:8] and resumed["end"]["global_step"] == 8


def fit_until_sigterm(args: list[str], tmp_path: Path, batches: int) -> str:
    """Run ``python ARGS`` with the rank probe, send SIGTERM to its process group once ``batches`` training batches
    ran, and require a clean exit (0); returns what it printed."""
    log = tmp_path / "log.txt"
    process = start(args, clean_env(tmp_path / "probe"), log)
    wait_for(lambda: batches_seen(tmp_path / "probe") >= batches, process, log)
    os.killpg(process.pid, signal.SIGTERM)
    assert finish(process, log, timeout=120) == 0, log.read_text()[-3000:]
    return log.read_text()


@pytest.mark.slow
def test_sigterm_to_every_ddp_rank_saves_a_checkpoint_and_exits(data: Path, tmp_path: Path) -> None:
    """SLURM preempts by sending SIGTERM to every task; Lightning's launcher keeps both ranks in one group here."""
    args = [
        "-m", "yonos", "fit", "-c", str(TINY / "teacher_x2.yaml"), "-c", str(CLUSTER / "ddp.yml"), "--trainer.devices", "2",
        *tiny_args(tmp_path, data, "--trainer.max_steps", "100000", "--trainer.limit_val_batches", "0"),
    ]
    printed = fit_until_sigterm(args, tmp_path, batches=3)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] >= 3  # ModelCheckpoint alone would have saved nothing before step 100
    for rank in (0, 1):  # saved together, at the same step, by both ranks
        assert (tmp_path / "probe" / f"saved-step{checkpoint['global_step']}-rank{rank}.json").exists()
    assert "SIGTERM: saved" in printed


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_with_the_stage_yaml_alone(data: Path, tmp_path: Path) -> None:
    """No strategy fragment layered: PreemptionCheckpoint comes with every stage yaml."""
    args = [
        "-m", "yonos", "fit", "-c", str(TINY / "teacher_x2.yaml"),
        *tiny_args(tmp_path, data, "--trainer.max_steps", "100000", "--trainer.limit_val_batches", "0"),
    ]
    printed = fit_until_sigterm(args, tmp_path, batches=2)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 2 <= checkpoint["global_step"] < 100  # ModelCheckpoint alone saves nothing before step 100
    assert "SIGTERM: saved" in printed
