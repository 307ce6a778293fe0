"""train.grad_accum: k micro-batches give the update of one batch (gradients, SD-DiT centers, losses;
also under 2-process DDP); train.precision=fp16: the gradient scaler's state resumes exactly, and a
step the scaler skips moves nothing."""

import json
import subprocess
import sys

import pytest
import torch

from sddit.config import load_config
from sddit.train import Trainer
from test_resume_ddp import ENV, _free_port, assert_states_equal, final_state, train_cmd


def make_trainer(tmp_path, objective, *overrides):
    cfg = load_config(
        "digits_tiny",
        [
            f"objective={objective}",
            f"run_dir={tmp_path}",
            "train.ckpt_every=0",
            "train.num_threads=1",
            "train.log_every=1",
            *overrides,
        ],
    )
    return Trainer(cfg, log=lambda *a: None)


def one_step(tmp_path, objective, k, *overrides):
    """Gradients, loss terms and (SD-DiT) pending centers of step 0 with k micro-batches."""
    trainer = make_trainer(tmp_path / f"k{k}", objective, f"train.grad_accum={k}", *overrides)
    x0, y = trainer.dataset.batch(trainer.sampler.next())
    loss, terms = trainer.forward_backward(x0, y)
    grads = {n: p.grad.clone() for n, p in trainer.net.named_parameters() if p.grad is not None}
    centers = getattr(trainer.objective, "_pending_centers", None)
    return grads, {"loss": loss.item(), **{n: float(v) for n, v in terms.items()}}, centers


def grads_close(a, b):
    for name, g in a.items():
        torch.testing.assert_close(b[name], g, rtol=1e-4, atol=1e-6 * max(g.abs().max().item(), 1e-3), msg=name)


@pytest.mark.parametrize(
    "objective,overrides",
    [
        ("dit", ()),
        ("maskdit", ()),
        ("sddit", ()),
        # the teacher's per-sample noise draw and the sigma band must follow the global batch too
        ("sddit", ("sddit.teacher_sigma=shift", "sddit.disc_sigma_max=1.0", "sddit.image_token=mean")),
        ("sddit", ("sddit.disc_loss=align", "sddit.teacher_sigma=shift", "sddit.mask_ratio=0.25")),
    ],
)
def test_micro_batches_give_the_gradients_of_one_batch(tmp_path, objective, overrides, monkeypatch):
    """Same weights, same batch, same step: the summed gradients of 4 micro-batches of 8 equal the
    gradients of the batch of 32 to float round-off, and so do the loss terms and SD-DiT's pending
    centers, so the optimiser step that follows is the same."""
    g1, r1, c1 = one_step(tmp_path, objective, 1, *overrides)
    g4, r4, c4 = one_step(tmp_path, objective, 4, *overrides)
    assert g1.keys() == g4.keys() and len(g1) > 10
    grads_close(g1, g4)
    assert r1.keys() == r4.keys()
    # SD-DiT's batch-spread monitors are per forward (the spread of its own rows), so not additive
    per_forward = ("prototypes_used_", "teacher_logit_std_", "teacher_token_std")
    for name, v in r1.items():
        if not name.startswith(per_forward):
            assert r4[name] == pytest.approx(v, rel=1e-5, abs=1e-7), name
    if objective == "sddit" and c1 is not None:
        for a, b in zip(c1, c4):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # the check can fail: micro-batches that all took the first rows of the global draw (no offset) differ
    from sddit.objectives import Objective

    real = Objective.global_rows
    monkeypatch.setattr(Objective, "global_rows", lambda self, b: (real(self, b)[0], slice(0, b)))
    g_wrong, _, _ = one_step(tmp_path / "wrong", objective, 4, *overrides)
    with pytest.raises(AssertionError):
        grads_close(g1, g_wrong)


def test_micro_batch_rows_tile_the_global_draw(tmp_path):
    """Micro-batch m of rank r draws rows [(r*k + m)*b, (r*k + m + 1)*b) of the step's global draw."""
    trainer = make_trainer(tmp_path, "maskdit")
    obj = trainer.objective
    x0 = torch.zeros(32, 1, 8, 8)
    whole = obj.draw(x0, step=3)
    whole_mask = obj.draw_mask(whole, 16, 0.5)
    parts, masks = [], []
    for m in range(4):
        with obj.micro_batch(m, 4):
            n = obj.draw(x0[:8], step=3)
            parts.append(n)
            masks.append(obj.draw_mask(n, 16, 0.5))
    assert obj.micro == (0, 1)  # reset on exit
    assert torch.equal(torch.cat([p.sigma for p in parts]), whole.sigma)
    assert torch.equal(torch.cat([p.eps for p in parts]), whole.eps)
    assert torch.equal(torch.cat([p.drop for p in parts]), whole.drop)
    assert torch.equal(torch.cat(masks), whole_mask)


def states_close(a, b, atol):
    """assert_states_equal's tolerance rules; the teacher part only where there is one (sddit)."""
    if not any(k.startswith("teacher.") for k in a["objective"]):
        teacher = {"teacher.none": torch.zeros(1)}
        a, b = {**a, "objective": teacher}, {**b, "objective": teacher}
    assert_states_equal(a, b, exact=False, atol=atol)


@pytest.mark.parametrize("objective", ["dit", "maskdit", "sddit"])
def test_accumulated_training_follows_the_unaccumulated_run(tmp_path, objective):
    """Five optimiser steps with 4 micro-batches end where five plain steps end (weights, EMA,
    teacher to float tolerance; Adam turns exactly-zero gradients' round-off into lr-sized steps for
    the attention key bias only, which assert_states_equal bounds separately)."""
    states = {}
    for k in (1, 4):
        trainer = make_trainer(tmp_path / f"k{k}", objective, f"train.grad_accum={k}", "train.max_steps=5")
        trainer.fit()
        states[k] = final_state(tmp_path / f"k{k}")
    states_close(states[1], states[4], atol=2e-5)
    if objective == "sddit":
        torch.testing.assert_close(
            states[4]["objective"]["center_patch"], states[1]["objective"]["center_patch"], rtol=1e-4, atol=1e-6
        )


def test_two_processes_with_accumulation_match_one_plain_process(tmp_path):
    """torchrun with 2 ranks x 2 micro-batches == 1 process, 1 batch (SD-DiT: teacher and centers too)."""
    steps = ["--max-steps", "8", "--set", "train.ckpt_every=0", "--set", "train.log_every=4"]
    subprocess.run(train_cmd(tmp_path / "one", *steps), check=True, env=ENV, capture_output=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "sddit.cli",
        *train_cmd(tmp_path / "two", *steps, "--set", "train.grad_accum=2")[3:],
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [4, 8]
    for a, b in zip(one, two):
        for key in ("loss", "loss_gen", "loss_disc", "teacher_entropy_patch", "teacher_entropy_image"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert_states_equal(a, b, exact=False, atol=2e-5)
    torch.testing.assert_close(b["objective"]["center_patch"], a["objective"]["center_patch"], rtol=1e-4, atol=1e-6)


def test_grad_accum_must_split_the_rank_batch(tmp_path):
    from sddit.errors import ConfigError

    with pytest.raises(ConfigError, match="train.grad_accum=5 must be >= 1 and divide train.batch_size=32"):
        load_config("digits_tiny", ["train.grad_accum=5"])


# ---------------------------------------------------------------------------------------------- fp16


def test_fp16_resume_is_exact_and_needs_the_scaler_state(tmp_path, monkeypatch):
    """fp16 on CPU: 12 steps straight == 6 steps, a new process-like Trainer resuming, 6 more steps
    (weights, EMA, teacher, centers, optimiser and scaler state bit for bit). The scaler has moved by
    step 6, and a resume that dropped its state would end elsewhere."""
    fp16 = ("train.precision=fp16", "train.max_steps=12")
    straight = make_trainer(tmp_path / "straight", "sddit", *fp16)
    straight.fit()
    a = final_state(tmp_path / "straight")

    first = make_trainer(tmp_path / "resumed", "sddit", *fp16)
    first.fit(until=6)
    mid = final_state(tmp_path / "resumed")
    assert mid["step"] == 6 and mid["scaler"]["scale"] < 2.0**16  # overflows halved the initial scale
    second = make_trainer(tmp_path / "resumed", "sddit", *fp16)
    assert second.step == 6 and second.amp.scale == mid["scaler"]["scale"]
    second.fit()
    b = final_state(tmp_path / "resumed")
    assert b["step"] == 12 and a["scaler"] == b["scaler"]
    assert_states_equal(a, b, exact=True)
    for key in ("center_patch", "center_cls"):
        assert torch.equal(a["objective"][key], b["objective"][key])
    for ga, gb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ga["exp_avg"], gb["exp_avg"]) and torch.equal(ga["exp_avg_sq"], gb["exp_avg_sq"])

    from sddit.train.amp import Precision

    monkeypatch.setattr(Precision, "load_state_dict", lambda self, state: None)  # a resume that forgets the scaler
    (tmp_path / "resumed" / "checkpoints" / "ckpt-0000012.pt").unlink()
    forgetful = make_trainer(tmp_path / "resumed", "sddit", *fp16)
    assert forgetful.step == 6 and forgetful.amp.scale == 2.0**16
    forgetful.fit()
    c = final_state(tmp_path / "resumed")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


def test_a_step_the_scaler_skips_moves_nothing(tmp_path):
    """Overflowing fp16 gradients: the optimiser, sampling EMA, teacher and centers stay where they
    were, the step counter advances, the scale halves, and the skip is logged."""
    trainer = make_trainer(tmp_path, "sddit", "train.precision=fp16", "train.max_steps=3")
    trainer.amp.scaler.load_state_dict({**trainer.amp.scaler.state_dict(), "scale": 2.0**60})  # certain overflow
    before = {
        part: {k: v.clone() for k, v in sd.items()}
        for part, sd in (
            ("model", trainer.net.state_dict()),
            ("ema", trainer.ema.state_dict()),
            ("objective", trainer.objective.state_dict()),
        )
    }
    trainer.fit(until=1)
    assert trainer.step == 1 and trainer.amp.scale == 2.0**59
    for part, sd in (
        ("model", trainer.net.state_dict()),
        ("ema", trainer.ema.state_dict()),
        ("objective", trainer.objective.state_dict()),
    ):
        for k, v in sd.items():
            assert torch.equal(before[part][k], v), (part, k)
    assert not trainer.opt.state  # AdamW never stepped
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["fp16_skipped"] == 1.0 and record["grad_scale"] == 2.0**59
    trainer.amp.scaler.load_state_dict({**trainer.amp.scaler.state_dict(), "scale": 64.0})
    trainer.fit(until=3)  # with a small scale the following steps are taken
    assert trainer.opt.state and not torch.equal(
        before["ema"]["model.final_layer.linear.weight"], trainer.ema.state_dict()["model.final_layer.linear.weight"]
    )


def test_fp16_is_a_valid_precision_and_others_are_not():
    from sddit.errors import ConfigError

    assert load_config("digits_tiny", ["train.precision=fp16"]).train.precision == "fp16"
    with pytest.raises(ConfigError, match="fp32, bf16, fp16"):
        load_config("digits_tiny", ["train.precision=fp8"])
