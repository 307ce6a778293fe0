"""The SD-DiT study's options: each config key changes what a training step computes (each test here
would fail if its key were ignored), and the per-term gradient-norm logging."""

import json

import pytest
import torch

from sddit.config import load_config
from sddit.data import load_digits
from sddit.diffusion import EDMPrecond
from sddit.errors import ConfigError
from sddit.models import build_model
from sddit.objectives import build_objective
from sddit.train import Trainer


def make(*overrides, objective="sddit"):
    cfg = load_config("digits_tiny", [f"objective={objective}", *overrides])
    torch.manual_seed(0)
    net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data)
    return cfg, net, build_objective(cfg, net)


def randomize_(module, seed=1):
    """Random values in every trainable layer (adaLN and final layers start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def batch(n=16):
    return load_digits("train").batch(torch.arange(n))


def loss_terms(*overrides, step=0):
    cfg, net, obj = make(*overrides)
    randomize_(net)
    obj.teacher.load_state_dict({k: v for k, v in net.model.state_dict().items() if k in obj.teacher.state_dict()})
    x0, y = batch()
    loss, terms = obj(net, x0, y, step)
    return loss, terms, obj


def one_step(tmp_path, *overrides, name="run"):
    """Weights after one trainer step."""
    cfg = load_config(
        "digits_tiny",
        ["objective=sddit", f"run_dir={tmp_path / name}", "train.max_steps=1", "train.ckpt_every=0", *overrides],
    )
    trainer = Trainer(cfg, log=lambda *a: None)
    before = {k: v.clone() for k, v in trainer.net.model.state_dict().items()}
    trainer.fit()
    return before, trainer.net.model.state_dict()


def test_lambda_d_weights_the_discriminative_loss():
    loss0, terms0, _ = loss_terms("sddit.lambda_d=0")
    loss1, terms1, _ = loss_terms("sddit.lambda_d=0.5")
    assert torch.equal(terms0["loss_gen"], terms1["loss_gen"]) and torch.equal(terms0["loss_disc"], terms1["loss_disc"])
    torch.testing.assert_close(loss0, terms0["loss_gen"])
    torch.testing.assert_close(loss1, terms1["loss_gen"] + 0.5 * terms1["loss_disc"])


def test_teacher_conditioning_floor_changes_only_the_teachers_c_noise():
    _, base, _ = loss_terms()
    _, floored, obj = loss_terms("sddit.teacher_cond_sigma_min=0.05")
    assert torch.equal(base["loss_gen"], floored["loss_gen"])  # the student is untouched
    assert not torch.equal(base["loss_disc"], floored["loss_disc"])
    seen = []
    cfg, net, obj2 = make("sddit.teacher_cond_sigma_min=0.05")
    obj2.teacher.t_embedder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    obj2(net, *batch(), 0)
    # sigma_T = sigma_min = 0.002 for the input, but c_noise = ln(0.05) / 4 for the conditioning
    torch.testing.assert_close(seen[-1], torch.full((16,), torch.tensor(0.05).log().item() / 4))


def test_head_block_reads_an_earlier_block_and_the_teacher_stops_there():
    cfg, net, obj = make("model.head_block=1")
    student = net.model
    assert student.head_block == 1 and obj.teacher.head_block == 1 and len(student.blocks) == 2
    randomize_(net)
    x, t, y = torch.randn(3, 1, 8, 8), torch.zeros(3), torch.tensor([1, 2, 3])
    enc = student.encode(x, t, y)
    assert not torch.equal(enc.head_tokens, enc.tokens)  # the head reads block 1, the decoder block 2
    out = student(x, t, y, return_tokens=True)
    torch.testing.assert_close(out.head, student.head(enc.head_tokens))
    calls = []
    for block in obj.teacher.blocks:
        block.register_forward_hook(lambda *a: calls.append(1))
    obj(net, *batch(), 0)
    assert len(calls) == 1  # the teacher runs only the blocks its head reads
    with pytest.raises(ConfigError, match="head_block"):
        build_model(load_config("digits_tiny", ["objective=sddit", "model.head_block=5"]))


def test_mask_fill_zeros_vs_learned_token():
    out = {}
    for fill in ("learned", "zeros"):
        cfg, net, obj = make(f"model.mask_token={fill}")
        randomize_(net)
        out[fill] = net(
            torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
            torch.tensor([0.5, 1.0]),
            torch.tensor([1, 2]),
            return_tokens=True,
            ids_keep=torch.tensor([[0, 5, 7], [1, 2, 3]]),
        )
    assert net.model.mask_token is None
    assert not torch.equal(out["learned"].out, out["zeros"].out)


def test_mask_fill_input_puts_the_noisy_input_tokens_at_masked_positions():
    """mask_token=input (MaskGWM's reading of SD-DiT): the decoder sees the masked positions' own
    embedded noisy input; nothing masked, it is the ordinary forward."""
    _, net, _ = make("model.mask_token=input")
    model = net.model.eval()  # no label dropout: the forwards below must see the same labels
    randomize_(net)
    x, t, y = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(2), torch.tensor([1, 2])
    ids_keep = torch.tensor([[0, 5, 7], [1, 2, 3]])
    seen = []
    model.decoder_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(x, t, y, ids_keep=ids_keep)
    enc = model.encode(x, t, y)  # all tokens: the embedded input at every position is enc.input_tokens
    positions = seen[0] - model.decoder_pos_embed  # (B, T, D) what the decoder got, without its position table
    masked = [i for i in range(16) if i not in (0, 5, 7)]
    torch.testing.assert_close(positions[0, masked], model.decoder_embed(enc.input_tokens)[0, masked])
    assert not torch.allclose(positions[0, [0]], model.decoder_embed(enc.input_tokens)[0, [0]])  # visible: encoder's
    torch.testing.assert_close(model(x, t, y), model(x, t, y, ids_keep=torch.arange(16).expand(2, 16)))


def test_head_last_layer_init():
    norms = {}
    for init in ("trunc_normal", "pytorch"):
        _, net, _ = make(f"model.head_last_init={init}", "model.head_bottleneck_dim=64")
        norms[init] = net.model.head.weight_v.norm(dim=1).mean().item()
    assert norms["trunc_normal"] == pytest.approx(0.02 * 64**0.5, rel=0.15)  # std 0.02 per entry
    assert norms["pytorch"] == pytest.approx((64 / 3) ** 0.5 / 8, rel=0.15)  # uniform(+-1/sqrt(fan_in)) per entry
    with pytest.raises(ConfigError, match="head_last_init"):
        load_config("digits_tiny", ["model.head_last_init=xavier"])


def test_freeze_last_layer_keeps_the_prototypes_for_the_first_steps(tmp_path):
    key = "head.last_layer.parametrizations.weight.original1"
    before, after = one_step(tmp_path, "sddit.freeze_last_layer_steps=1", name="frozen")
    assert torch.equal(before[key], after[key]) and not torch.equal(
        before["final_layer.linear.weight"], after["final_layer.linear.weight"]
    )
    before, after = one_step(tmp_path, name="free")
    assert not torch.equal(before[key], after[key])


def test_cls_teacher_temperature():
    _, base, _ = loss_terms()
    _, fixed, obj = loss_terms("sddit.teacher_temp_cls=0.02")
    assert obj.tau_t_cls(0) == 0.02 and obj.tau_t_cls(10**6) == 0.02
    assert torch.equal(base["loss_patch"], fixed["loss_patch"]) and not torch.equal(
        base["loss_image"], fixed["loss_image"]
    )


def test_grad_clip_limits_the_update(tmp_path):
    """Clipped to a tiny norm, the gradient is comparable to Adam's eps, so the first update shrinks
    far below Adam's usual lr-sized step."""
    k = "final_layer.linear.weight"  # at init only the zero-initialised output layer has a gradient
    before, clipped = one_step(tmp_path, "train.grad_clip=1e-6", name="clip")
    _, free = one_step(tmp_path, name="noclip")
    step_clipped = (clipped[k] - before[k]).abs().mean()
    step_free = (free[k] - before[k]).abs().mean()
    assert 0 < step_clipped < 0.5 * step_free


@pytest.mark.parametrize("objective,disc", [("sddit", True), ("dit", False)])
def test_gradnorm_logging(tmp_path, objective, disc):
    cfg = load_config(
        "digits_tiny",
        [
            f"objective={objective}",
            f"run_dir={tmp_path}",
            "train.max_steps=4",
            "train.gradnorm_every=2",
            "train.ckpt_every=0",
        ],
    )
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    norms = [r for r in records if "gradnorm_gen_encoder" in r]
    assert [r["step"] for r in norms] == [2, 4]  # the steps numbered as in the loss records
    for r in norms:
        assert r["gradnorm_gen_encoder"] > 0 and r["gradnorm_gen_decoder"] > 0 and r["gradnorm_gen_embedders"] > 0
        if disc:
            assert r["gradnorm_disc_encoder"] > 0 and r["gradnorm_disc_head"] > 0
            assert r["gradnorm_disc_decoder"] == 0  # L_D never reaches the decoder
            assert r["gradnorm_gen_head"] == 0  # nor L_gen the head
        else:
            assert not any(k.startswith("gradnorm_disc") for k in r)
    assert (tmp_path / "gradnorm.png").stat().st_size > 0


def test_gradnorm_logging_leaves_the_training_step_unchanged(tmp_path):
    """The norms come from autograd.grad on the same graph: the step's update is the same with or without."""
    runs = {}
    for every in (0, 1):
        cfg = load_config(
            "digits_tiny",
            [
                "objective=sddit",
                f"run_dir={tmp_path / str(every)}",
                "train.max_steps=3",
                f"train.gradnorm_every={every}",
                "train.ckpt_every=0",
            ],
        )
        trainer = Trainer(cfg, log=lambda *a: None)
        trainer.fit()
        runs[every] = trainer.net.model.state_dict()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k


# ---- the third round's options: a live image-level term, a harder patch task, SRA's alignment


def test_cls_teacher_is_one_vector_at_init_and_the_pooled_token_is_not():
    """Why the [CLS] term starts dead (adaLN-Zero: every block the identity at init, so [CLS] is
    the same for every image) and why the mean-pooled image token does not."""
    x0, y = batch()
    for token, alive in (("cls", False), ("mean", True)):
        _, net, obj = make(f"sddit.image_token={token}")
        _, terms = obj(net, x0, y, 0)
        assert (terms["teacher_logit_std_image"] > 1e-3) == alive, (token, terms["teacher_logit_std_image"])
    assert net.model.cls_token is None and net.model.head_pool


def test_pooled_image_token_is_the_mean_of_the_visible_patch_tokens():
    _, net, _ = make("sddit.image_token=mean")
    randomize_(net)
    model = net.model.eval()  # no label dropout: both encodes below must see the same labels
    x, t, y = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([1, 2])
    ids_keep = torch.tensor([[0, 5, 7], [1, 2, 3]])
    enc = model.encode(x, t, y, ids_keep=ids_keep)
    assert enc.head_tokens.shape[1] == 1 + 3 and enc.tokens.shape[1] == 3  # the decoder never sees it
    model.head_pool = False  # the same encoder without the pooled token: its visible tokens' mean
    plain = model.encode(x, t, y, ids_keep=ids_keep).head_tokens  # (B, 3, D)
    torch.testing.assert_close(enc.head_tokens[:, 0], plain.mean(1))
    torch.testing.assert_close(enc.head_tokens[:, 1:], plain)


def test_fmnist_preset_image_term_stays_alive(tmp_path):
    """50 steps of the Fashion-MNIST SD-DiT preset as it is: the image-level teacher must not be
    uniform at the end (within 1% of ln K is the dead fixed point the [CLS] term sat in), and the
    batch must spread over more than a few prototypes."""
    import math

    cfg = load_config(
        "fmnist_sddit",
        [
            f"run_dir={tmp_path}",
            "train.max_steps=50",
            "train.log_every=25",
            "train.ckpt_every=0",
            "train.compile=false",
        ],
    )
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.fit()
    last = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    log_k = math.log(cfg.model.head_dim)
    assert last["teacher_entropy_image"] < 0.99 * log_k, last
    assert last["teacher_logit_std_image"] > 0.01 and last["prototypes_used_image"] > 10, last
    assert (tmp_path / "teacher.png").stat().st_size > 0


def test_uniform_term_warning_once_per_stretch():
    import math

    cfg, net, obj = make("train.max_steps=1000", "train.log_every=25")
    log_k = math.log(cfg.model.head_dim)
    uniform, alive = (
        {"teacher_entropy_image": log_k, "teacher_entropy_patch": 0.5 * log_k},
        {"teacher_entropy_image": 0.5 * log_k, "teacher_entropy_patch": 0.5 * log_k},
    )
    said = [w for step in range(25, 200, 25) for w in obj.warnings(step, uniform)]
    assert said == []  # 200 steps = a fifth of the run: not yet sustained
    said = [w for step in range(200, 400, 25) for w in obj.warnings(step, uniform)]
    assert len(said) == 1 and "image-level" in said[0] and "sddit.image_token=mean" in said[0]
    assert obj.warnings(400, alive) == []  # it left uniform: re-armed
    said = [w for step in range(425, 700, 25) for w in obj.warnings(step, uniform)]
    assert len(said) == 1


def test_teacher_head_block_and_the_band():
    _, net, obj = make("model.head_block=1", "sddit.teacher_head_block=2")
    assert net.model.head_block == 1 and obj.teacher.head_block == 2
    calls = []
    for block in obj.teacher.blocks:
        block.register_forward_hook(lambda *a: calls.append(1))
    obj(net, *batch(), 0)
    assert len(calls) == 2
    _, all_terms, _ = loss_terms()
    _, none_in_band, _ = loss_terms("sddit.disc_sigma_max=1e-9")  # no student sigma that low: no L_D
    _, some_in_band, obj = loss_terms("sddit.disc_sigma_max=0.3")
    assert all_terms["loss_disc"] > 0 and none_in_band["loss_disc"] == 0
    assert torch.equal(all_terms["loss_gen"], none_in_band["loss_gen"])
    inside = (obj.draw(batch()[0], 0).sigma <= 0.3).float().mean()  # the fraction of samples in the band
    assert 0 < inside < 1
    assert 0 < some_in_band["loss_patch"] < all_terms["loss_patch"]  # out-of-band samples count 0
    with pytest.raises(ValueError, match="teacher_head_block"):
        make("sddit.teacher_head_block=9")


def test_alignment_loss_is_sras_smooth_l1_to_the_teachers_raw_tokens():
    from sddit.models.heads import ProjectorMLP
    from sddit.objectives.sddit import alignment_loss

    cfg, net, obj = make(
        "sddit.disc_loss=align", "model.head_block=1", "sddit.teacher_head_block=2", "sddit.lambda_d=0.2"
    )
    model = net.model
    assert isinstance(model.head, ProjectorMLP) and model.cls_token is None and not model.head_pool
    randomize_(net)
    obj.teacher.load_state_dict({k: v for k, v in net.model.state_dict().items() if k in obj.teacher.state_dict()})
    x0, y = batch()
    loss, terms = obj(net, x0, y, 0)
    assert set(terms) >= {"loss_gen", "loss_align", "loss_disc", "teacher_token_std"}
    torch.testing.assert_close(loss, terms["loss_gen"] + 0.2 * terms["loss_align"])
    # smooth-L1 with beta 0.05: quadratic below 0.05, linear above
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.01, 1.0]])
    torch.testing.assert_close(alignment_loss(a, b), torch.tensor([(0.5 * 0.01**2 / 0.05 + (1.0 - 0.025)) / 2]))
    obj.parts["disc"].backward()
    assert model.head.mlp[0].weight.grad.abs().sum() > 0 and model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.blocks[1].attn.qkv.weight.grad is None  # the student's tokens come from block 1


def test_head_token_fraction_reads_the_same_random_patches_for_student_and_teacher():
    """sddit.head_token_fraction < 1: the head and the patch loss see a random subset of each image's
    patch tokens, the same positions for student and teacher; the image token still pools every patch."""
    _, net, obj = make("sddit.image_token=mean", "sddit.mask_ratio=0", "sddit.head_token_fraction=0.5")
    randomize_(net)
    x0, y = batch()
    num_tokens = obj.num_tokens(x0)
    seen = {}
    net.model.head.register_forward_pre_hook(lambda m, args: seen.update(student=args[0].shape) or None)
    obj.teacher.head.register_forward_pre_hook(lambda m, args: seen.update(teacher=args[0].shape) or None)
    loss, terms = obj(net, x0, y, 0)
    keep = round(0.5 * num_tokens)
    assert seen["student"][1] == seen["teacher"][1] == 1 + keep < 1 + num_tokens
    assert torch.isfinite(loss) and terms["prototypes_used_patch"] > 1

    model = net.model.eval()  # no label dropout: both forwards below must see the same labels
    x, t, labels = torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([1, 2])
    ids = torch.tensor([[0, 3], [1, 2]])
    full = model(x, t, labels, return_tokens=True).head  # (2, 1 + T, K)
    sub = model(x, t, labels, return_tokens=True, head_ids=ids).head  # (2, 1 + 2, K)
    torch.testing.assert_close(sub[:, 0], full[:, 0])  # the pooled token: from all patches
    for b in range(2):
        torch.testing.assert_close(sub[b, 1:], full[b, 1 + ids[b]])


def test_head_token_fraction_is_checked():
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="head_token_fraction"):
            load_config("digits_tiny", ["objective=sddit", f"sddit.head_token_fraction={bad}"])
    with pytest.raises(ConfigError, match="sddit.mask_ratio=0"):
        load_config("digits_tiny", ["objective=sddit", "sddit.mask_ratio=0.2", "sddit.head_token_fraction=0.5"])
