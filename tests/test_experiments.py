"""Every shipped experiment yaml, real and tiny, launched as the README writes it: ``yonos fit -c YAML`` with only
device, precision, size, data-folder and backbone overrides, on a small folder in Stable Diffusion 2.1-base's
layout (cross-attention UNet, VAE, PNDM epsilon scheduler config, model_index.json); then ``yonos validate`` of
what it saved, and the chain hand-off with the real yamls in fresh processes.

Frozen weights are checked bit for bit against what the stage loaded (EMA on, as the yamls ship it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_unet
from diffusers import PNDMScheduler
from test_data import decompression_bomb_png

from yonos import chain
from yonos.base import write_model_index
from yonos.callbacks import PreemptionCheckpoint, TrainableEMA
from yonos.cli import run
from yonos.models import LatentCodec

ROOT = Path(__file__).resolve().parents[1]
# Every SR-stage yaml, including ones added later. tiny/codec.yaml trains the VAE itself and tiny/prior.yaml the
# base's UNet (no SD folder to start from, no SR stage); tests/test_codec.py and tests/test_prior.py launch them.
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").rglob("*.yaml") if p.name not in ("codec.yaml", "prior.yaml"))
STEPS = 2


def _name(path: Path) -> str:
    return path.relative_to(ROOT / "experiments").as_posix()


@pytest.fixture(scope="module")
def sd_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder laid out like stabilityai/stable-diffusion-2-1-base, with tiny random networks: a
    cross-attention UNet with SD's 4 input channels, a VAE, the PNDM epsilon scheduler config SD 2.1-base ships,
    model_index.json. No text encoder: the stored empty-prompt embedding is then zeros."""
    root = tmp_path_factory.mktemp("sd21-layout")
    tiny_unet(4, seed=3).save_pretrained(root / "unet")
    torch.manual_seed(4)
    LatentCodec.from_preset("tiny").vae.save_pretrained(root / "vae")
    PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    ).save_pretrained(root / "scheduler")
    write_model_index(root, "PNDMScheduler")
    return root


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory: pytest.TempPathFactory):
    """torchvision's AlexNet and VGG16 file names in a private torch hub folder, holding RANDOM networks (the real
    yamls validate with LPIPS-alex and the decoder stage trains with LPIPS-vgg; the tests cannot download the
    ImageNet weights). The values are not LPIPS."""
    import torchvision

    hub = tmp_path_factory.mktemp("torch-home")
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(5)
    torch.save(torchvision.models.alexnet().state_dict(), hub / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    torch.save(torchvision.models.vgg16().state_dict(), hub / "hub" / "checkpoints" / "vgg16-397923af.pth")
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(hub)
    yield hub
    if previous is None:
        os.environ.pop("TORCH_HOME")
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="module")
def hostile_data(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos, with a decompression bomb and a text file in the training folder."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(sample_data / "train", root / "train")
    shutil.copytree(sample_data / "val", root / "val")
    decompression_bomb_png(root / "train" / "bomb.png")
    (root / "train" / "notes.txt").write_text("not an image")
    return root


def overrides(data: Path) -> list[str]:
    """What a CPU run of a real yaml changes: device, precision, size, data folders. Nothing else."""
    return [
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        f"--trainer.max_steps={STEPS}", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val'}", "--data.hr_size=32",
        "--data.batch_size=2", "--data.val_batch_size=2", "--data.num_workers=0",
    ]


class Fitted:
    """One fit per yaml per test module (stages that need a predecessor's checkpoint reuse it)."""

    def __init__(self, out: Path, sd: Path, data: Path) -> None:
        self.out, self.sd, self.data = out, sd, data
        self.results: dict[Path, dict] = {}

    def producer(self, scale: int) -> Path:
        """A yaml whose stage produces an x``scale`` model: a teacher or student at that scale (real yamls first)."""
        for config in sorted(EXPERIMENTS, key=lambda p: ("tiny" in p.parts, p.name)):
            stage = chain.read_stage(config)
            if stage.kind in ("teacher", "distill") and stage.scale == scale:
                return config
        raise LookupError(f"no experiment yaml trains an x{scale} model")

    def backbone(self, config: Path, stage: chain.Stage) -> list[str]:
        """The backbone override: the SD-layout folder for a teacher, the checkpoint of the stage before otherwise."""
        if stage.kind == "teacher":
            return [f"--model.init_args.backbone.pretrained={self.sd}"]
        settings = yaml.safe_load(config.read_text())
        # A student learns from a teacher at teacher_scale; the decoder stage fine-tunes a model at data.scales[0].
        scale = settings["model"]["init_args"].get("teacher_scale", 2) if stage.kind == "distill" else settings["data"]["scales"][0]
        return [f"--model.init_args.{stage.input_key}={self.fit(self.producer(scale))['ckpt']}"]

    def fit(self, config: Path) -> dict:
        if config in self.results:
            return self.results[config]
        stage = chain.read_stage(config)
        source = self.backbone(config, stage)
        workdir = self.out / _name(config).replace("/", "_").removesuffix(".yaml")
        workdir.mkdir(parents=True)
        cwd = os.getcwd()
        os.chdir(workdir)  # the yaml's relative output folders (outputs/...) land here
        try:
            cli = run(["fit", "-c", str(config), *overrides(self.data), *source])
            ckpt = workdir / "end.ckpt"
            cli.trainer.save_checkpoint(ckpt)
        finally:
            os.chdir(cwd)
        ema = [c for c in cli.trainer.callbacks if isinstance(c, TrainableEMA)]
        self.results[config] = {
            "ckpt": ckpt, "stage": stage, "source": source, "workdir": workdir, "step": cli.trainer.global_step,
            "trainable": {n for n, p in cli.model.named_parameters() if p.requires_grad},
            "ema_params": sum(p.numel() for p in ema[0]._average_model.parameters()) if ema else None,
            "trainable_params": sum(p.numel() for p in cli.model.parameters() if p.requires_grad),
            "callbacks": [type(c) for c in cli.trainer.callbacks],
        }
        return self.results[config]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, sd_layout: Path, hostile_data: Path, lpips_weights) -> Fitted:
    return Fitted(tmp_path_factory.mktemp("fits"), sd_layout, hostile_data)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _assert_identical(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert actual.keys() == expected.keys() and actual, what
    changed = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not changed, f"{what}: frozen weights changed: {changed[:5]}"


def _loaded_weights(result: dict, sd: Path) -> dict[str, torch.Tensor]:
    """The weights the stage started from, by checkpoint key (teacher: the SD folder; later stages: the previous
    stage's checkpoint, whose denoiser becomes the student / the frozen denoiser)."""
    stage = result["stage"]
    if stage.kind == "teacher":
        from yonos.models import SRDenoiser

        denoiser = SRDenoiser.from_pretrained(str(sd)).state_dict()
        vae = LatentCodec.from_pretrained(str(sd)).state_dict()
        return {**{f"denoiser.{k}": v for k, v in denoiser.items()}, **{f"codec.{k}": v for k, v in vae.items()}}
    source = _state(Path(result["source"][0].split("=", 1)[1]))
    prefix = "student." if any(k.startswith("student.") for k in source) else "denoiser."
    target = "student." if stage.kind == "distill" else "denoiser."
    return {**{f"{target}{k}": v for k, v in _sub(source, prefix).items()}, **{k: v for k, v in source.items() if k.startswith("codec.")}}


@pytest.mark.slow
@pytest.mark.parametrize("config", EXPERIMENTS, ids=_name)
def test_every_experiment_fits_validates_and_keeps_frozen_weights(config: Path, fitted: Fitted, sd_layout: Path):
    result = fitted.fit(config)
    assert result["step"] == STEPS
    assert PreemptionCheckpoint in result["callbacks"], "SIGTERM must save last.ckpt with the shipped yaml alone"
    checkpoint = torch.load(result["ckpt"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == STEPS and checkpoint["hyper_parameters"]["seed"] == checkpoint["datamodule_hyper_parameters"]["seed"]

    if result["ema_params"] is not None:  # EMA over what trains, only
        assert result["ema_params"] == result["trainable_params"]
        assert "current_model_state" not in checkpoint  # saved after fit: live weights = average, stored once
    loaded = _loaded_weights(result, sd_layout)
    for key in ("state_dict", "current_model_state"):
        if key not in checkpoint:
            continue
        saved = checkpoint[key]
        frozen = [k for k in loaded if k not in result["trainable"]]
        assert frozen and all(k in saved for k in frozen), f"{key}: loaded frozen weights missing from the checkpoint"
        changed = [k for k in frozen if not torch.equal(saved[k], loaded[k])]
        assert not changed, f"{_name(config)} {key}: frozen weights changed: {changed[:5]}"
        assert any(not torch.equal(saved[k], loaded[k]) for k in result["trainable"] if k in loaded), "nothing trained"

    cwd = os.getcwd()
    os.chdir(result["workdir"])
    try:
        cli = run(["validate", "-c", str(config), *overrides(fitted.data), *result["source"], f"--ckpt_path={result['ckpt']}"])
    finally:
        os.chdir(cwd)
    metrics = cli.trainer.callback_metrics
    assert "val/psnr" in metrics and torch.isfinite(metrics["val/psnr"])


@pytest.mark.slow
def test_the_chain_hands_on_the_end_of_training_with_per_stage_overrides(tmp_path: Path, sd_layout: Path, hostile_data, lpips_weights):
    """``yonos chain`` on the real yamls, each stage in a fresh process (teacher -> decoder stage here; the
    teacher -> student hand-off is the same code, tested in process in test_distill). The backbone override goes to
    the teacher only: the decoder stage has no such argument and would reject it. Three steps with periodic
    checkpoints every 5000: final.ckpt must hold step 3 anyway, and the next stage must start from those weights."""
    configs = [str(ROOT / "experiments" / f"{name}.yaml") for name in ("teacher_x2", "decoder_finetune")]
    args = [a for a in overrides(hostile_data) if not a.startswith("--trainer.max_steps")]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run(["chain", *configs, "--out", "chain", "--", *args, "--trainer.max_steps=3",
             "--stage", "teacher_x2", f"--model.init_args.backbone.pretrained={sd_layout}"])
    finally:
        os.chdir(cwd)
    finals = {name: tmp_path / "chain" / name / "final.ckpt" for name in ("teacher_x2", "decoder_x2")}
    for name, path in finals.items():
        assert torch.load(path, map_location="cpu", weights_only=True)["global_step"] == 3, name
    teacher, decoder = (_state(p) for p in finals.values())
    _assert_identical(_sub(decoder, "denoiser."), _sub(teacher, "denoiser."), "decoder-stage denoiser")
    encoder = {k: v for k, v in _sub(teacher, "codec.").items() if not k.startswith(("vae.decoder.", "vae.post_quant_conv."))}
    _assert_identical({k: _sub(decoder, "codec.")[k] for k in encoder}, encoder, "decoder-stage VAE encoder")
    trained = _sub(decoder, "codec.vae.decoder.")
    assert any(not torch.equal(v, _sub(teacher, "codec.vae.decoder.")[k]) for k, v in trained.items())  # it trained


def test_per_stage_overrides_and_their_errors():
    common, per_stage = chain.split_overrides(
        ["--a=1", "--stage", "teacher_x2", "--b", "2", "--stage=student_x4", "--c=3", "--stage", "all", "--d=4"],
        ["teacher_x2", "student_x4"],
    )
    assert common == ["--a=1", "--d=4"]
    assert per_stage == {"teacher_x2": ["--b", "2"], "student_x4": ["--c=3"]}
    with pytest.raises(ValueError, match="--stage student_x8: no such stage.*teacher_x2"):
        chain.split_overrides(["--stage", "student_x8", "--x=1"], ["teacher_x2", "student_x4"])


def test_handoff_best_without_a_monitor_is_an_error_before_training(tmp_path: Path, sample_data: Path):
    config = ROOT / "experiments" / "tiny" / "teacher_x2.yaml"
    args = [f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32"]
    with pytest.raises(ValueError, match="--handoff best needs a ModelCheckpoint with a `monitor`"):
        chain.run_chain([config], tmp_path / "chain", extra=args, handoff="best", isolate=False)
    assert not (tmp_path / "chain" / "teacher_x2" / "checkpoints").exists()  # refused before the first step


def test_a_final_checkpoint_from_another_step_is_not_published(tmp_path: Path, sample_data: Path, monkeypatch):
    config = ROOT / "experiments" / "tiny" / "teacher_x2.yaml"
    args = [f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
            "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
    monkeypatch.setattr(chain, "_saved_step", lambda path: 0)  # as if the saved file were older than the trainer
    with pytest.raises(RuntimeError, match="saved at step 0 but training ended at step 1; not published"):
        chain.run_chain([config], tmp_path / "chain", extra=args, isolate=False)
    assert not (tmp_path / "chain" / "teacher_x2" / "final.ckpt").exists()


def test_handoff_best_publishes_the_best_monitored_checkpoint(tmp_path: Path, sample_data: Path):
    fragment = tmp_path / "best.yml"
    fragment.write_text(
        "trainer:\n  callbacks:\n"
        "    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
        "{monitor: train/loss, mode: min, save_top_k: 1, every_n_train_steps: 1, filename: best}}\n"
    )
    config = ROOT / "experiments" / "tiny" / "teacher_x2.yaml"
    args = ["-c", str(fragment), f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}",
            "--data.hr_size=32", "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1"]
    finals = chain.run_chain([config], tmp_path / "chain", extra=args, handoff="best", isolate=False)
    best = tmp_path / "chain" / "teacher_x2" / "checkpoints" / "best.ckpt"
    assert best.is_file() and os.path.samefile(finals["teacher_x2"], best)
