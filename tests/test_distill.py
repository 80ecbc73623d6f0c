"""Scale distillation: what teacher and student see, frozen teacher, checkpoints of both kinds, the chain."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.testing import assert_close

from yonos import chain
from yonos import cli as yonos_cli
from yonos.checkpoints import load_stage_checkpoint
from yonos.data import SRDataModule
from yonos.degradations import bicubic_downsample, upsample_to
from yonos.diffusion import add_noise, predict_x0, sample_timesteps, x0_loss_weight
from yonos.modules import ScaleDistillModule, TeacherModule

ROOT = Path(__file__).resolve().parents[1]


def _trainer(root: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, enable_checkpointing=False,
    )


def _student(teacher_ckpt: Path, **kwargs) -> ScaleDistillModule:
    defaults = dict(teacher_ckpt=str(teacher_ckpt), teacher_scale=2, student_scale=4, lpips_net="none", log_images=0)
    return ScaleDistillModule(**{**defaults, **kwargs})


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"hr": hr, "lr_x2": bicubic_downsample(hr, 2), "lr_x4": bicubic_downsample(hr, 4), "index": torch.arange(2)}


def test_student_starts_as_the_teacher_and_teacher_is_frozen(teacher_ckpt: Path):
    module = _student(teacher_ckpt)
    teacher_state, student_state = module.teacher.state_dict(), module.student.state_dict()
    assert teacher_state.keys() == student_state.keys()
    assert all(torch.equal(teacher_state[k], student_state[k]) for k in teacher_state)
    assert module.student.unet is not module.teacher.unet
    assert not any(p.requires_grad for p in module.teacher.parameters())
    loaded = TeacherModule.load_from_checkpoint(teacher_ckpt)
    assert all(torch.equal(v, loaded.denoiser.state_dict()[k]) for k, v in teacher_state.items())


def test_a_loaded_stage_serves_as_teacher_like_its_file(teacher_ckpt: Path):
    """A StageCheckpoint in memory (benchmarks, notebooks) gives the module its file gives; hparams keep the path."""
    stage = load_stage_checkpoint(teacher_ckpt)
    from_object = ScaleDistillModule(teacher_ckpt=stage, teacher_scale=2, student_scale=4, lpips_net="none", log_images=0)
    from_file = _student(teacher_ckpt)

    assert from_object.teacher is stage.denoiser  # taken over, not copied
    assert from_object.hparams["teacher_ckpt"] == str(teacher_ckpt)
    assert from_object.model_card == from_file.model_card
    assert torch.equal(from_object.scheduler.alphas_cumprod, from_file.scheduler.alphas_cumprod)
    state = from_file.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in from_object.state_dict().items())
    assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in from_object.hparams.values())  # no networks


def _spy_on_networks(module: ScaleDistillModule) -> dict[str, list]:
    """Record (z_t, z_lr, t) of every teacher and student call."""
    calls: dict[str, list] = {"teacher": [], "student": []}
    for name in calls:
        network = getattr(module, name)
        original = network.forward

        def spy(z_t, z_lr, t, _name=name, _original=original):
            calls[_name].append((z_t.clone(), z_lr.clone(), t.clone()))
            return _original(z_t, z_lr, t)

        network.forward = spy
    return calls


def _expected_inputs(module: ScaleDistillModule, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the networks must see, built by hand from the batch: each image encoded alone, (t, eps) from a fresh
    copy of the module's stream (seed + rank 0, timesteps first, then noise)."""
    hr = batch["hr"]
    with torch.no_grad():
        encode = lambda images: torch.cat([module.codec.encode(image[None]) for image in images])  # noqa: E731
        z_hr = encode(hr)
        z_lr_teacher = encode(upsample_to(batch[f"lr_x{module.teacher_scale}"], tuple(hr.shape[-2:])))
        z_lr_student = encode(upsample_to(batch[f"lr_x{module.student_scale}"], tuple(hr.shape[-2:])))
    generator = torch.Generator().manual_seed(module.hparams.seed)
    t = sample_timesteps(hr.shape[0], 1000, generator, torch.device("cpu"))
    eps = torch.randn(z_hr.shape, generator=generator)
    z_t = add_noise(z_hr, eps, t, module.alphas_cumprod)
    return {"z_hr": z_hr, "z_lr_teacher": z_lr_teacher, "z_lr_student": z_lr_student, "t": t, "z_t": z_t}


def test_teacher_and_student_see_the_same_noisy_latent_of_the_hr_and_their_own_lr(teacher_ckpt: Path):
    """Values, not just inequality: swapping the two LR images, or building z_t from anything but the HR latent,
    fails here."""
    module = _student(teacher_ckpt)
    calls = _spy_on_networks(module)
    batch = _batch()
    module.training_step(batch, 0)
    expected = _expected_inputs(module, batch)
    (z_t_teacher, z_lr_teacher, t_teacher), = calls["teacher"]
    (z_t_student, z_lr_student, t_student), = calls["student"]
    assert torch.equal(z_t_teacher, z_t_student) and torch.equal(t_teacher, t_student)
    assert torch.equal(t_teacher, expected["t"])
    assert_close(z_t_teacher, expected["z_t"], rtol=0, atol=1e-5)
    assert_close(z_lr_teacher, expected["z_lr_teacher"], rtol=0, atol=1e-5)  # encode(upsample(lr_x2))
    assert_close(z_lr_student, expected["z_lr_student"], rtol=0, atol=1e-5)  # encode(upsample(lr_x4))
    # The two conditions are far apart compared to the tolerance, so a swap cannot pass the two lines above.
    assert (expected["z_lr_teacher"] - expected["z_lr_student"]).abs().max() > 1e-2


def test_distillation_loss_is_the_weighted_distance_to_the_teachers_x0(teacher_ckpt: Path):
    module = _student(teacher_ckpt)
    module.student.unet.conv_in.weight.data.add_(0.01)  # a student that differs from its teacher
    module.student.eval()
    batch = _batch()
    loss = module.training_step(batch, 0)
    e = _expected_inputs(module, batch)
    with torch.no_grad():
        x0 = {
            name: predict_x0(network(e["z_t"], e[f"z_lr_{name}"], e["t"]), e["z_t"], e["t"], module.alphas_cumprod, "v_prediction")
            for name, network in (("teacher", module.teacher), ("student", module.student))
        }
    weight = x0_loss_weight(module.alphas_cumprod, e["t"], "one_plus_snr")
    expected = (weight * (x0["student"] - x0["teacher"]).pow(2).mean(dim=(1, 2, 3))).mean()
    assert_close(loss, expected, rtol=1e-4, atol=0)


def test_an_ema_trained_teacher_hands_its_ema_weights_to_the_next_stages(ema_teacher):
    """The shipped yamls train with EMA and the chain hands last.ckpt on: the next stage's teacher (and the
    student's start) must be the EMA average, not the live weights."""
    path, live = ema_teacher
    assert len(live) == 3
    # EMA with decay 0.5: a copy after step 1, then ema = 0.5 ema + 0.5 w.
    ema = {k: 0.25 * live[0][k] + 0.25 * live[1][k] + 0.5 * live[2][k] for k in live[0]}
    assert max((live[2][k] - ema[k]).abs().max().item() for k in ema) > 1e-3  # live and EMA weights are apart
    checkpoint = torch.load(path, weights_only=True)
    assert all(torch.equal(checkpoint["current_model_state"][f"denoiser.{k}"], v) for k, v in live[2].items())
    module = _student(path)
    for network in (module.teacher, module.student):
        for key, value in network.state_dict().items():
            assert_close(value, ema[key], rtol=1e-5, atol=1e-7)
    decoder_source = load_stage_checkpoint(path, key="model.denoiser_ckpt")
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in decoder_source.denoiser.state_dict().items())


def test_teacher_is_bit_identical_after_optimizer_steps(teacher_ckpt: Path):
    module = _student(teacher_ckpt, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.student.parameters()}
    module.train()
    for step in range(3):
        optimizer.zero_grad()
        module.training_step(_batch(step), step).backward()
        assert all(p.grad is None for p in module.teacher.parameters())
        optimizer.step()
    assert not module.teacher.training
    assert all(torch.equal(v, before[k]) for k, v in module.teacher.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in module.student.state_dict().items())


def test_identical_lr_and_identical_networks_give_exactly_zero_loss(teacher_ckpt: Path):
    module = _student(teacher_ckpt)
    batch = _batch()
    batch["lr_x4"] = batch["lr_x2"]  # the student sees exactly what the teacher sees
    # In train mode diffusers' UNet takes other kernels than in eval mode (outputs agree to ~1e-6), so the
    # bit-exact check runs both networks in the same mode.
    module.student.eval()
    assert module.training_step(batch, 0).item() == 0.0
    module.student.train()
    assert module.training_step(batch, 0).item() < 1e-10


def test_gt_mix_blends_distillation_and_ground_truth_terms_as_one_minus_g_and_g(teacher_ckpt: Path):
    """With the student seeing the teacher's LR (distillation term exactly 0), loss(g) = g * w ||x0 - z_hr||^2:
    a swapped blend (g on the teacher term) gives (1 - g) times it instead."""
    batch = _batch()
    batch["lr_x4"] = batch["lr_x2"]
    losses = {}
    for gt_mix in (0.0, 0.3, 1.0):
        module = _student(teacher_ckpt, gt_mix=gt_mix)
        module.student.eval()
        losses[gt_mix] = module.training_step(batch, 0).item()
    e = _expected_inputs(module, batch)
    with torch.no_grad():
        x0_student = predict_x0(
            module.student(e["z_t"], e["z_lr_student"], e["t"]), e["z_t"], e["t"], module.alphas_cumprod, "v_prediction"
        )
    weight = x0_loss_weight(module.alphas_cumprod, e["t"], "one_plus_snr")
    ground_truth_term = (weight * (x0_student - e["z_hr"]).pow(2).mean(dim=(1, 2, 3))).mean().item()
    assert ground_truth_term > 1e-3
    assert losses[0.0] == 0.0
    assert losses[1.0] == pytest.approx(ground_truth_term, rel=1e-4)
    assert losses[0.3] == pytest.approx(0.3 * ground_truth_term, rel=1e-4)
    with pytest.raises(ValueError, match="model.gt_mix"):
        _student(teacher_ckpt, gt_mix=1.5)


@pytest.mark.parametrize(
    ("teacher_scale", "student_scale", "message"),
    [(2, 2, "model.student_scale = 2"), (2, 3, "multiple of model.teacher_scale"), (4, 2, "model.student_scale = 2")],
)
def test_scale_rule_violations_name_the_keys(teacher_ckpt: Path, teacher_scale, student_scale, message):
    with pytest.raises(ValueError, match=message):
        _student(teacher_ckpt, teacher_scale=teacher_scale, student_scale=student_scale)


def test_teacher_scale_must_match_the_checkpoint(teacher_ckpt: Path):
    with pytest.raises(ValueError, match="trained at x2"):
        _student(teacher_ckpt, teacher_scale=4, student_scale=8)


def test_missing_teacher_checkpoint_names_the_key(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="model.teacher_ckpt"):
        _student(tmp_path / "missing.ckpt")


def test_datamodule_must_provide_both_scales(teacher_ckpt: Path, sample_data: Path, tmp_path: Path):
    datamodule = SRDataModule(train_dir=str(sample_data / "train"), val_dir=None, hr_size=32, scales=[4], num_workers=0)
    with pytest.raises(ValueError, match=r"model.teacher_scale = 2 .*data.scales"):
        _trainer(tmp_path, 1).fit(_student(teacher_ckpt), datamodule=datamodule)


def test_distilled_checkpoints_load_and_serve_as_teachers(teacher_ckpt: Path, sample_data: Path, tmp_path: Path):
    datamodule = SRDataModule(
        train_dir=str(sample_data / "train"), val_dir=None, hr_size=32, scales=[2, 4], batch_size=2, num_workers=0
    )
    module = _student(teacher_ckpt)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "student_x4.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state)  # the frozen teacher is reloaded, not stored

    loaded = ScaleDistillModule.load_from_checkpoint(path).eval()
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.sample(lr, seeds=[3]), module.eval().sample(lr, seeds=[3]))

    next_stage = _student(path, teacher_scale=4, student_scale=8)
    assert all(torch.equal(v, module.student.state_dict()[k]) for k, v in next_stage.teacher.state_dict().items())


def test_tiny_student_fits_with_falling_loss(teacher_ckpt: Path):
    module = _student(teacher_ckpt, optimizer=lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.0))
    batch = _batch()
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for step in range(40):
        module.stream = type(module.stream)(seed=0)  # the same (t, eps) every step: a fixed regression target
        optimizer.zero_grad()
        loss = module.training_step(batch, step)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def _tiny_chain_args(tmp_path: Path, sample_data: Path, steps: int) -> list[str]:
    return [
        f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
    ]


def test_chain_resumes_an_interrupted_stage_and_skips_finished_ones(tmp_path: Path, sample_data: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    configs = ["experiments/tiny/teacher_x2.yaml", "experiments/tiny/distill_x2_to_x4.yaml"]
    out = tmp_path / "chain"
    # An interrupted teacher: two steps done, no final checkpoint.
    chain.run_chain(configs, out, until=2, extra=_tiny_chain_args(tmp_path, sample_data, 2), isolate=False)
    (out / "teacher_x2" / "final.ckpt").unlink()

    fits = []
    real_run = yonos_cli.run

    def recording_run(arguments, cli_class=yonos_cli.YonosCLI):
        cli = real_run(arguments, cli_class)
        fits.append((arguments, cli.trainer.ckpt_path, cli.trainer.global_step))
        return cli

    monkeypatch.setattr(yonos_cli, "run", recording_run)
    finals = chain.run_chain(configs, out, extra=_tiny_chain_args(tmp_path, sample_data, 4), isolate=False)
    assert list(finals) == ["teacher_x2", "student_x4"]
    (teacher_args, teacher_resumed_from, teacher_steps), (student_args, student_resumed_from, student_steps) = fits
    assert teacher_resumed_from and Path(teacher_resumed_from).name == "last.ckpt" and teacher_steps == 4
    assert student_resumed_from is None and student_steps == 4
    assert f"--model.init_args.teacher_ckpt={out / 'teacher_x2' / 'final.ckpt'}" in student_args
    assert torch.load(finals["student_x4"], weights_only=True)["hyper_parameters"]["student_scale"] == 4

    fits.clear()
    chain.run_chain(configs, out, extra=_tiny_chain_args(tmp_path, sample_data, 4), isolate=False)
    assert fits == []  # everything finished: nothing is refitted


def test_chain_plan_checks(tmp_path: Path):
    with pytest.raises(ValueError, match="must be a TeacherModule"):
        chain.plan_chain([ROOT / "experiments/tiny/distill_x2_to_x4.yaml"])
    with pytest.raises(ValueError, match="at most one decoder stage"):
        chain.plan_chain([ROOT / "experiments/tiny/teacher_x2.yaml", ROOT / "experiments/tiny/teacher_x2.yaml"])
    with pytest.raises(ValueError, match="--until 8"):
        chain.plan_chain([ROOT / "experiments/tiny/teacher_x2.yaml"], until=8)
    stages = chain.plan_chain(
        [ROOT / f"experiments/tiny/{name}.yaml" for name in ("teacher_x2", "distill_x2_to_x4", "distill_x4_to_x8")], until=4
    )
    assert [s.name for s in stages] == ["teacher_x2", "student_x4"]
