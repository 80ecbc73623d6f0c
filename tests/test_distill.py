"""Scale distillation: what teacher and student see, frozen teacher, checkpoints of both kinds, the chain."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from yonos import chain
from yonos.data import SRDataModule
from yonos.degradations import bicubic_downsample
from yonos.models import BackboneConfig
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


def test_teacher_and_student_see_the_same_noisy_latent_and_timestep(teacher_ckpt: Path):
    module = _student(teacher_ckpt)
    calls: dict[str, list] = {"teacher": [], "student": []}
    for name in calls:
        network = getattr(module, name)
        original = network.forward

        def spy(z_t, z_lr, t, _name=name, _original=original):
            calls[_name].append((z_t.clone(), z_lr.clone(), t.clone()))
            return _original(z_t, z_lr, t)

        network.forward = spy
    module.training_step(_batch(), 0)
    (z_t_teacher, z_lr_teacher, t_teacher), = calls["teacher"]
    (z_t_student, z_lr_student, t_student), = calls["student"]
    assert torch.equal(z_t_teacher, z_t_student) and torch.equal(t_teacher, t_student)
    assert not torch.equal(z_lr_teacher, z_lr_student)  # only the LR condition differs


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


def test_gt_mix_adds_the_ground_truth_term(teacher_ckpt: Path):
    batch = _batch()
    batch["lr_x4"] = batch["lr_x2"]
    assert _student(teacher_ckpt, gt_mix=0.5).training_step(batch, 0).item() > 0.0
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
    real_fit = chain._fit

    def recording_fit(arguments, cli_class=None):
        cli = real_fit(arguments, cli_class)
        fits.append((arguments, cli.trainer.ckpt_path, cli.trainer.global_step))
        return cli

    monkeypatch.setattr(chain, "_fit", recording_fit)
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
