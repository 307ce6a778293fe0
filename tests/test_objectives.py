"""SD-DiT and MaskDiT objectives: teacher, centers, schedules, loss values, and what sampling touches."""

import math

import pytest
import torch

from sddit.config import load_config
from sddit.data import load_digits
from sddit.diffusion import EDMPrecond
from sddit.objectives import MaskDiTObjective, build_objective
from sddit.objectives.sddit import batch_spread, cosine_schedule, self_distillation_ce, teacher_temperature
from sddit.train.ema import copy_for_ema
from sddit.sampling import generate
from sddit.models import build_model


def make(objective, *overrides):
    cfg = load_config("digits_tiny", [f"objective={objective}", *overrides])
    torch.manual_seed(0)
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data)
    return cfg, net, build_objective(cfg, net)


def digits_batch(n=16):
    ds = load_digits("train")
    return ds.batch(torch.arange(n))


def randomize_(module):
    """Give zero-initialised layers (adaLN, final layer) random values so outputs are non-trivial."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_teacher_gets_no_gradient_and_follows_the_ema_rule():
    cfg, net, obj = make("sddit")
    x0, y = digits_batch()
    loss, _ = obj(net, x0, y, step=0)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in obj.teacher.parameters())
    assert not any(p is q for p in obj.teacher.parameters() for q in net.parameters())
    # the teacher is no submodule of the student: it is outside DDP and outside the optimiser
    assert all(not n.startswith("teacher") for n, _ in net.named_parameters())

    with torch.no_grad():  # move the student
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in obj.teacher.named_parameters()}
    student = dict(net.model.named_parameters())
    step = 7
    m = obj.momentum(step)
    assert 0.996 < m < 1
    obj.after_step(net, step)
    for n, p in obj.teacher.named_parameters():
        torch.testing.assert_close(p, m * before[n] + (1 - m) * student[n], rtol=1e-6, atol=1e-7)
    # only encoder-side parts are in the teacher
    names = {n for n, _ in obj.teacher.named_parameters()}
    assert not any(n.startswith(("decoder", "final_layer", "mask_token")) for n in names)
    assert any(n.startswith("head.") for n in names) and any(n.startswith("blocks.") for n in names)


def test_schedules():
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert teacher_temperature(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(10, 10, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(3, 0, 0.04, 0.07) == pytest.approx(0.07)
    _, _, obj = make("sddit", "sddit.teacher_momentum_schedule=fixed", "sddit.teacher_momentum=0.99")
    assert obj.momentum(0) == obj.momentum(10) == 0.99


def test_centers_follow_their_ema_and_are_used_before_the_update():
    cfg, net, obj = make("sddit")
    K = cfg.model.head_dim
    logits = torch.randn(4, 1 + 16, K)
    old_cls, old_patch = obj.center_cls.clone() + 0.3, obj.center_patch.clone() - 0.2
    obj.center_cls.copy_(old_cls)
    obj.center_patch.copy_(old_patch)
    obj._update_centers(*obj._batch_centers(logits, n_img=1))
    torch.testing.assert_close(obj.center_cls, 0.9 * old_cls + 0.1 * logits[:, 0].mean(0, keepdim=True))
    torch.testing.assert_close(obj.center_patch, 0.9 * old_patch + 0.1 * logits[:, 1:].mean((0, 1)).view(1, 1, K))

    # a loss call uses the current centers; they move when the step is taken (after_step), so a
    # skipped non-finite step leaves them alone
    x0, y = digits_batch(8)
    before = obj.center_patch.clone()
    obj(net, x0, y, step=0)
    assert torch.equal(before, obj.center_patch)
    obj.after_step(net, 0)
    assert not torch.equal(before, obj.center_patch)


def test_discriminative_loss_equals_direct_cross_entropy():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    t = torch.tensor([[0.3, 0.1, 0.0], [2.0, -1.0, 0.5]])
    c = torch.tensor([[0.1, -0.1, 0.0]])
    tau_s, tau_t = 0.1, 0.04
    ce, entropy, kl, p_mean = self_distillation_ce(s, t, c, tau_s, tau_t)
    p_sum = [0.0, 0.0, 0.0]
    for i in range(2):
        pt = [math.exp((t[i, k] - c[0, k]) / tau_t) for k in range(3)]
        pt = [v / sum(pt) for v in pt]
        zs = [math.exp(s[i, k] / tau_s) for k in range(3)]
        log_ps = [math.log(v / sum(zs)) for v in zs]
        expected = -sum(p * lp for p, lp in zip(pt, log_ps))
        assert ce[i].item() == pytest.approx(expected, rel=1e-5)
        assert entropy[i].item() == pytest.approx(-sum(p * math.log(p) for p in pt if p > 0), rel=1e-5, abs=1e-6)
        assert kl[i].item() == pytest.approx(expected - entropy[i].item(), rel=1e-5, abs=1e-6)
        p_sum = [a + b / 2 for a, b in zip(p_sum, pt)]
    assert p_mean.tolist() == pytest.approx(p_sum, rel=1e-5)  # the batch-mean teacher distribution


def test_batch_spread_is_the_mean_of_the_batch_std():
    """The liveness monitor's in-place std equals torch's unbiased std over dim 0, also on a strided view
    and in bf16 (computed in fp32), and is 0 when every image carries the same logits."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 16, generator=g) * 3 + 2
    x_before = x.clone()
    assert batch_spread(x).item() == pytest.approx(x.std(0).mean().item(), rel=1e-6)
    view = torch.randn(8, 6, 16, generator=g)[:, 1:]
    assert batch_spread(view).item() == pytest.approx(view.std(0).mean().item(), rel=1e-6)
    half = x.bfloat16()
    assert batch_spread(half).item() == pytest.approx(half.float().std(0).mean().item(), rel=1e-6)
    assert batch_spread(x[:1].expand(8, 5, 16)).item() == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(x, x_before)  # the in-place passes work on a copy, not on the logits


def test_sddit_compiled_cross_entropy_matches_eager():
    """train.compile compiles the cross-entropies and the teacher's forward too: same loss and
    gradients, and a warming-up teacher temperature must not recompile them every step."""
    from torch._dynamo.utils import counters

    x0, y = digits_batch(8)
    results = []
    for compile_ in (False, True):
        cfg, net, obj = make("sddit", f"train.compile={str(compile_).lower()}", "sddit.mask_ratio=0.25")
        randomize_(net)
        assert (obj._compiled_ce is not None) == compile_
        assert (obj._teacher_run is not None) == compile_
        for step in (0, 1, 2):  # tau_T differs at each step (warm-up)
            if step == 1:
                frames = counters["frames"]["total"]  # the patch and [CLS] graphs are built at step 0
            loss, terms = obj(net, x0, y, step=step)
        assert counters["frames"]["total"] == frames  # no recompilation for the new temperatures
        loss.backward()
        results.append((loss.detach(), terms["teacher_entropy_patch"], net.model.head.mlp[0].weight.grad.clone()))
    (l0, e0, g0), (l1, e1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e1, e0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-6)


def test_sddit_loss_terms_and_teacher_positions():
    cfg, net, obj = make("sddit")
    randomize_(net)
    obj.teacher.load_state_dict({k: v for k, v in net.model.state_dict().items() if k in obj.teacher.state_dict()})
    x0, y = digits_batch(8)
    torch.manual_seed(5)
    loss, terms = obj(net, x0, y, step=0)
    assert torch.isfinite(loss)
    lam = cfg.sddit.lambda_d
    torch.testing.assert_close(loss.detach(), terms["loss_gen"] + lam * (terms["loss_image"] + terms["loss_patch"]))
    K = cfg.model.head_dim
    for term in ("image", "patch"):
        assert 0 < terms[f"teacher_entropy_{term}"] < math.log(K) + 1e-4
        assert terms[f"kl_teacher_student_{term}"] >= -1e-5
        assert 1 <= terms[f"prototypes_used_{term}"] <= K + 1e-3


@pytest.mark.parametrize("objective", ["dit", "maskdit", "sddit"])
def test_losses_finite_under_bf16_autocast(objective):
    cfg, net, obj = make(objective)
    randomize_(net)
    x0, y = digits_batch(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, terms = obj(net, x0, y, step=0)
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_maskdit_mae_term_and_unmasked_finetune():
    cfg, net, obj = make("maskdit", "maskdit.unmask_finetune_steps=5")
    assert isinstance(obj, MaskDiTObjective)
    assert obj.mask_ratio(0) == 0.5 and obj.mask_ratio(cfg.train.max_steps - 5) == 0.0
    x0, y = digits_batch(8)
    _, terms = obj(net, x0, y, step=0)
    assert "loss_mae" in terms
    _, terms = obj(net, x0, y, step=cfg.train.max_steps - 1)
    assert "loss_mae" not in terms  # nothing is masked in the fine-tune


def test_tiny_sddit_overfits_a_batch_of_16_digits():
    cfg, net, obj = make("sddit", "train.max_steps=300")
    x0, y = digits_batch(16)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-3)

    def gen_loss():
        torch.manual_seed(123)
        with torch.no_grad():
            return float(obj(net, x0, y, step=0)[1]["loss_gen"])

    start = gen_loss()
    for step in range(300):
        loss, _ = obj(net, x0, y, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        obj.after_step(net, step)
    end = gen_loss()
    assert end < 0.5 * start, (start, end)


def test_sampling_never_touches_teacher_head_or_mask_token():
    cfg, net, obj = make("sddit")
    randomize_(net)
    ema = copy_for_ema(net)
    shape = (1, 8, 8)
    labels = torch.arange(4)
    ref = generate(ema, labels, range(4), shape, num_steps=3, cfg_scale=1.5, null_label=10)
    calls = []
    ema.model.head.register_forward_hook(lambda *a: calls.append("head"))
    with torch.no_grad():
        ema.model.mask_token.fill_(float("nan"))
        for p in ema.model.head.parameters():
            p.fill_(float("nan"))
        for p in obj.teacher.parameters():
            p.fill_(float("nan"))
    out = generate(ema, labels, range(4), shape, num_steps=3, cfg_scale=1.5, null_label=10)
    assert calls == [] and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)


def test_head_logits_stay_fp32_under_bf16_autocast():
    cfg, net, obj = make("sddit")
    tokens = torch.randn(2, 5, cfg.model.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.model.head(tokens).dtype == torch.float32


def test_teacher_sigma_options():
    from sddit.objectives.base import StepNoise

    s = torch.tensor([0.5, 2.0])

    def noise(sigma, seed=0):
        return StepNoise(
            sigma,
            torch.zeros(len(sigma), 1, 2, 2),
            torch.zeros(len(sigma)),
            torch.Generator().manual_seed(seed),
            slice(0, len(sigma)),
        )

    _, _, obj = make("sddit")
    assert torch.allclose(obj.teacher_sigma(noise(s)), torch.full_like(s, 0.002))
    _, _, obj = make("sddit", "sddit.teacher_sigma=fixed", "sddit.teacher_sigma_value=0.05")
    assert torch.allclose(obj.teacher_sigma(noise(s)), torch.full_like(s, 0.05))
    _, _, obj = make("sddit", "sddit.teacher_sigma=fraction", "sddit.teacher_sigma_fraction=0.25")
    assert torch.allclose(obj.teacher_sigma(noise(s)), s * 0.25)
    # SRA's shift: on the linear path t = sigma / (1 + sigma), t_T = t_S - U(0, 0.2), per sample
    _, _, obj = make("sddit", "sddit.teacher_sigma=shift", "sddit.teacher_time_shift=0.2")
    many = torch.logspace(-2, 1.5, 400)
    t_s, t_t = many / (1 + many), (lambda v: v / (1 + v))(obj.teacher_sigma(noise(many)))
    assert (t_t <= t_s + 1e-6).all() and (t_s - t_t <= 0.2 + 1e-6).all()
    gap = (t_s - t_t)[t_s > 0.25]  # away from the floor at sigma_min the gap is the uniform draw itself
    assert gap.min() < 0.02 and gap.max() > 0.18 and abs(gap.mean() - 0.1) < 0.02
    assert torch.equal(obj.teacher_sigma(noise(many)), obj.teacher_sigma(noise(many)))  # from the step's generator
    assert (obj.teacher_sigma(noise(torch.tensor([0.01]))) == 0.002).all()  # floored at sigma_min


@pytest.mark.parametrize("objective,preset", [("maskdit", "MaskDiT-S/2"), ("sddit", "SD-DiT-S/2")])
def test_objectives_use_the_preset_patch_size(objective, preset):
    """A preset sets the patch size (here 2) while model.patch_size keeps its default (4): the
    per-patch losses and masks must follow the model, not the unused config field (found on a GPU
    run of the ImageNet MaskDiT-XL/2 preset)."""
    cfg = load_config(
        f"imagenet256_{objective}_xl2",
        [f"model.preset={preset}", "model.input_size=8", "model.num_classes=10", "model.head_dim=64"],
    )
    assert cfg.model.patch_size != 2
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data)
    loss, _ = build_objective(cfg, net)(net, torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), 0)
    assert torch.isfinite(loss)


def test_sampling_ema_follows_the_student_step_by_step(tmp_path):
    """The trainer's sampling EMA is ema <- d * ema + (1 - d) * student after every step, with the
    warm-up decay min(d, (1 + k) / (10 + k)) at step k, checked against the student's weights."""
    from sddit.train import Trainer
    from sddit.train.ema import ema_decay

    cfg = load_config(
        "digits_tiny",
        [f"run_dir={tmp_path}", "train.max_steps=4", "train.ema_decay=0.6", "train.ckpt_every=0", "train.log_every=1"],
    )
    trainer = Trainer(cfg, log=lambda *a: None)
    expected = {n: p.detach().clone() for n, p in trainer.ema.named_parameters()}
    for k in range(4):
        trainer.fit(until=k + 1)
        d = ema_decay(k, 0.6, warmup=True)
        assert d == min(0.6, (1 + k) / (10 + k))
        for n, p in trainer.net.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.detach()
    for n, p in trainer.ema.named_parameters():
        torch.testing.assert_close(p, expected[n], rtol=1e-6, atol=1e-7, msg=n)
    assert ema_decay(100, 0.6, warmup=False) == 0.6 and ema_decay(0, 0.6, warmup=False) == 0.6
