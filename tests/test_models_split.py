"""Tests of the encoder/decoder DiT (MaskDiT, SD-DiT) and the DINO head. Tiny configs, CPU, fast."""

from __future__ import annotations

import pytest
import torch

from sddit.models.dit import DIT_SIZES
from sddit.models.heads import DINOHead
from sddit.models.split import SplitDiT, SplitDiT_models, count_params, format_param_table
from sddit.models.tokens import gather_tokens, masking_from_ids_keep, num_kept, random_masking, unshuffle

NUM_CLASSES = 10
TINY = dict(
    input_size=8,
    patch_size=2,
    in_channels=4,
    hidden_size=64,
    encoder_depth=2,
    decoder_depth=1,
    num_heads=4,
    num_classes=NUM_CLASSES,
    head_dim=64,
    head_hidden_dim=96,
    head_bottleneck_dim=32,
)
T_TOKENS = (8 // 2) ** 2  # 16


def tiny(**overrides) -> SplitDiT:
    torch.manual_seed(0)
    return SplitDiT(**{**TINY, **overrides})


@torch.no_grad()
def randomize_(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Re-draw the zero-initialised trainable params (adaLN, final layer, biases, CLS position) so
    every path of the network is non-trivial."""
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        if p.requires_grad and bool((p == 0).all()):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def batch(b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.randn(b, generator=g)  # c_noise = ln(sigma) / 4 is real-valued
    y = torch.randint(0, NUM_CLASSES, (b,), generator=g)
    y[-1] = NUM_CLASSES  # one null label
    return x, t, y


# --------------------------------------------------------------------------------------------
# masking helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.2, 0.25, 0.5, 0.75])
def test_masking_then_unshuffle_restores_order(ratio):
    b, d = 6, 5
    x = torch.arange(b * T_TOKENS * d, dtype=torch.float32).reshape(b, T_TOKENS, d)
    g = torch.Generator().manual_seed(0)
    ids_keep, ids_restore, mask = random_masking(x, ratio, generator=g)
    t_keep = round(T_TOKENS * (1 - ratio))
    assert ids_keep.shape == (b, t_keep) and ids_restore.shape == (b, T_TOKENS) and mask.shape == (b, T_TOKENS)
    assert torch.equal(mask.sum(1), torch.full((b,), float(T_TOKENS - t_keep)))
    assert torch.equal(torch.gather(mask, 1, ids_keep), torch.zeros(b, t_keep))  # kept = unmasked
    assert len({tuple(row.tolist()) for row in mask}) > 1  # per-sample masks differ

    visible = gather_tokens(x, ids_keep)  # (B, T_keep, D)
    full = unshuffle(visible, ids_restore, fill=-1.0)  # (B, T, D)
    keep = mask == 0
    assert torch.equal(full[keep], x[keep])  # every visible token back at its position
    assert bool((full[~keep] == -1).all())

    # A full permutation (visible + masked tokens) un-shuffles to exactly the input.
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    masked = gather_tokens(x, ids_shuffle[:, t_keep:])
    restored = gather_tokens(torch.cat([visible, masked], 1), ids_restore)
    assert torch.equal(restored, x)

    # Rebuilding from ids_keep alone gives the same mask and the same un-shuffle.
    ids_restore2, mask2 = masking_from_ids_keep(ids_keep, T_TOKENS)
    assert torch.equal(mask2, mask)
    assert torch.equal(unshuffle(visible, ids_restore2, fill=-1.0), full)

    # Learned-token fill and the int form of the API.
    token = torch.full((1, 1, d), 7.0)
    assert bool((unshuffle(visible, ids_restore, token)[~keep] == 7).all())
    ik, ir, m = random_masking(T_TOKENS, ratio, batch_size=b, device="cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(ik, ids_keep) and torch.equal(ir, ids_restore) and torch.equal(m, mask)


def test_num_kept_rounding_and_range():
    assert num_kept(256, 0.2) == 205  # round(204.8)
    assert num_kept(256, 0.5) == 128
    assert num_kept(16, 0.0) == 16
    with pytest.raises(ValueError):
        num_kept(16, 1.0)


# --------------------------------------------------------------------------------------------
# SplitDiT forward paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_token", ["learned", "zeros"])
def test_ratio_zero_student_path_equals_plain_forward_and_encode_decode(mask_token):
    model = randomize_(tiny(mask_token=mask_token)).eval()
    assert (model.mask_token is None) == (mask_token == "zeros")
    x, t, y = batch()
    with torch.no_grad():
        plain = model(x, t, y)
        d = model(x, t, y, return_tokens=True)
        enc = model.encode(x, t, y)
        via_restore = model.decode(enc.tokens, enc.c, enc.ids_restore)
        via_none = model.decode(enc.tokens, enc.c, None)
    assert plain.shape == (3, 4, 8, 8)
    assert torch.equal(d.out, plain)
    assert torch.equal(via_none, plain)
    torch.testing.assert_close(via_restore, plain, rtol=0, atol=0)
    assert d.tokens.shape == (3, 1 + T_TOKENS, 64)
    assert d.head.shape == (3, 1 + T_TOKENS, 64)
    assert torch.equal(d.mask, torch.zeros(3, T_TOKENS))
    assert torch.equal(d.ids_keep, torch.arange(T_TOKENS).expand(3, -1))

    # Masked training forward runs for both fill modes.
    model.train()
    out = model(x, t, y, mask_ratio=0.5, return_tokens=True)
    assert out.out.shape == (3, 4, 8, 8) and out.tokens.shape == (3, 1 + T_TOKENS // 2, 64)
    assert torch.isfinite(out.out).all()


def test_ids_keep_and_generator_are_honoured():
    model = randomize_(tiny()).eval()
    x, t, y = batch()
    a = model(x, t, y, mask_ratio=0.5, return_tokens=True, generator=torch.Generator().manual_seed(3))
    b = model(x, t, y, mask_ratio=0.5, return_tokens=True, generator=torch.Generator().manual_seed(3))
    c = model(x, t, y, return_tokens=True, ids_keep=a.ids_keep)  # ratio ignored when ids_keep given
    assert torch.equal(a.ids_keep, b.ids_keep) and torch.equal(a.out, b.out)
    assert torch.equal(c.mask, a.mask)
    torch.testing.assert_close(c.out, a.out, rtol=0, atol=0)


def test_encoder_only_sees_visible_tokens():
    model = randomize_(tiny()).eval()
    x, t, y = batch()
    ids_keep, _, mask = random_masking(
        T_TOKENS, 0.5, batch_size=3, device="cpu", generator=torch.Generator().manual_seed(0)
    )
    p, grid = 2, 4

    def perturb_patch(x, b, j):
        x = x.clone()
        r, c = divmod(int(j), grid)
        x[b, :, r * p : (r + 1) * p, c * p : (c + 1) * p] += 10.0
        return x

    base = model.encode(x, t, y, ids_keep=ids_keep).tokens
    for b in range(3):
        masked_j = torch.nonzero(mask[b]).flatten()[0]
        same = model.encode(perturb_patch(x, b, masked_j), t, y, ids_keep=ids_keep).tokens
        assert torch.equal(same, base), "a masked patch leaked into the encoder"
        visible_j = ids_keep[b, 0]
        changed = model.encode(perturb_patch(x, b, visible_j), t, y, ids_keep=ids_keep).tokens
        assert not torch.allclose(changed[b], base[b])  # sanity: visible patches do matter


# --------------------------------------------------------------------------------------------
# init and gradients
# --------------------------------------------------------------------------------------------


def test_exactly_zero_output_at_init():
    model = tiny()
    x, t, y = batch()
    model.train()
    assert torch.equal(model(x, t, y, mask_ratio=0.5), torch.zeros(3, 4, 8, 8))
    model.eval()
    assert torch.equal(model(x, t, y), torch.zeros(3, 4, 8, 8))
    # adaLN-Zero: every block's modulation is zero, so the encoder is the identity on its input.
    tokens, _ = model.embed(x, t, y)
    enc = model.encode(x, t, y).tokens[:, 1:]
    assert torch.equal(enc, tokens)


@pytest.mark.parametrize("decoder_hidden_size", [None, 32])
def test_gradients_reach_every_trainable_parameter(decoder_hidden_size):
    model = randomize_(tiny(decoder_hidden_size=decoder_hidden_size)).train()
    if decoder_hidden_size:
        assert isinstance(model.decoder_embed, torch.nn.Linear) and isinstance(model.decoder_cond, torch.nn.Linear)
    x, t, y = batch(4)
    out = model(x, t, y, mask_ratio=0.5, return_tokens=True, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    loss = (out.out * torch.randn(out.out.shape, generator=g)).sum()
    loss = loss + (out.head * torch.randn(out.head.shape, generator=g)).sum()
    loss.backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "decoder_pos_embed", "head.last_layer.parametrizations.weight.original0"}
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert model.mask_token.grad.abs().sum() > 0


def test_mask_token_stays_in_graph_without_masking():
    """Unmasked fine-tune (ratio 0): the learned mask token still gets a (zero) grad, so DDP
    without find_unused_parameters does not stop."""
    model = randomize_(tiny(head_dim=0)).train()
    x, t, y = batch()
    model(x, t, y).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert torch.equal(model.mask_token.grad, torch.zeros_like(model.mask_token))


def test_grad_checkpointing_matches():
    model = randomize_(tiny()).train()
    x, t, y = batch()
    drop = torch.zeros(3, dtype=torch.long)
    ids_keep, _, _ = random_masking(
        T_TOKENS, 0.25, batch_size=3, device="cpu", generator=torch.Generator().manual_seed(0)
    )
    weight = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model(x, t, y, ids_keep=ids_keep, force_drop_ids=drop)
        (out * weight).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = run()
    model.grad_checkpointing = True
    got, got_grads = run()
    torch.testing.assert_close(got, ref)
    assert got_grads.keys() == ref_grads.keys() and any(n.startswith("blocks.") for n in got_grads)
    for name, g in ref_grads.items():  # recomputing the activations must not change a gradient
        torch.testing.assert_close(got_grads[name], g, msg=name)


def test_label_dropout_follows_training_and_force_drop_ids():
    model = randomize_(tiny(class_dropout_prob=0.5))
    x, t, y = batch(8)
    y[:] = 1
    model.eval()
    _, c_eval = model.embed(x, t, y)
    model.train()
    _, c_keep = model.embed(x, t, y, force_drop_ids=torch.zeros(8, dtype=torch.long))
    assert torch.equal(c_keep, c_eval)
    _, c_drop = model.embed(x, t, y, force_drop_ids=torch.ones(8, dtype=torch.long))
    _, c_null = model.eval().embed(x, t, torch.full_like(y, NUM_CLASSES))
    assert torch.equal(c_drop, c_null)


# --------------------------------------------------------------------------------------------
# teacher
# --------------------------------------------------------------------------------------------


def test_make_teacher():
    student = randomize_(tiny())
    teacher = student.make_teacher()
    s_params = dict(student.named_parameters())
    t_params = dict(teacher.named_parameters())
    assert set(t_params) <= set(s_params)
    assert not any(n.startswith(("decoder", "final_layer", "mask_token")) for n in t_params)
    assert teacher.decoder_blocks is None and teacher.final_layer is None and teacher.mask_token is None
    assert teacher.decoder_embed is None and teacher.decoder_pos_embed is None and teacher.head is not None
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(n.startswith("head.") for n in t_params) and "cls_token" in t_params
    for n, p in t_params.items():
        assert torch.equal(p, s_params[n]) and p.data_ptr() != s_params[n].data_ptr(), n
    # The student keeps its decoder and trainability.
    assert student.decoder_blocks is not None and s_params["blocks.0.attn.qkv.weight"].requires_grad

    # Pinned to eval (label dropout off) even when a parent calls .train().
    assert not teacher.training
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())

    student.eval()
    x, t, y = batch()
    with torch.no_grad():
        s = student.encode(x, t, y)
        te = teacher.encode(x, t, y)
        assert torch.equal(te.tokens, s.tokens)
        assert torch.equal(teacher.head(te.tokens), student.head(s.tokens))
    with pytest.raises(RuntimeError):
        teacher(x, t, y)

    # An EMA update matched by name works and only touches the teacher.
    before = s_params["blocks.0.attn.qkv.weight"].clone()
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            p.mul_(0.9).add_(s_params[n].detach() * 2, alpha=0.1)
    assert torch.equal(s_params["blocks.0.attn.qkv.weight"], before)
    assert not torch.equal(t_params["blocks.0.attn.qkv.weight"], before)
    torch.testing.assert_close(teacher.head.weight_g, torch.full_like(teacher.head.weight_g, 1.1))  # EMA of g=1 vs 2g


# --------------------------------------------------------------------------------------------
# DINO head
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nlayers", [1, 3])
def test_dino_head(nlayers):
    torch.manual_seed(0)
    head = DINOHead(24, out_dim=50, hidden_dim=40, bottleneck_dim=16, nlayers=nlayers)
    x = torch.randn(2, 5, 24) * 30
    logits = head(x)
    assert logits.shape == (2, 5, 50)
    z = head.embed(x)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 5))
    assert torch.equal(head.weight_g, torch.ones(50, 1)) and not head.weight_g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    assert logits.abs().max() <= 1 + 1e-5  # cosine similarities to unit prototypes

    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(x).logsumexp(-1).sum().backward()
    assert head.weight_g.grad is None and head.weight_v.grad is not None
    opt.step()
    assert torch.equal(head.weight_g, torch.ones(50, 1))
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    keys = set(head.state_dict())
    assert {"last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1"} <= keys


def test_dino_head_input_norm_is_scale_invariant():
    torch.manual_seed(0)
    head = DINOHead(24, out_dim=50, hidden_dim=40, bottleneck_dim=16, norm_input=True)
    x = torch.randn(3, 24)
    torch.testing.assert_close(head(x), head(x * 100), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in head.parameters()) == sum(
        p.numel() for p in DINOHead(24, out_dim=50, hidden_dim=40, bottleneck_dim=16).parameters()
    )


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------


def test_presets_on_meta_device():
    assert len(SplitDiT_models) == 24
    for name, build in SplitDiT_models.items():
        family, rest = name.rsplit("-", 1)
        size, patch = rest.split("/")
        s = DIT_SIZES[size]
        with torch.device("meta"):
            m = build()
        assert m.patch_size == int(patch) and m.hidden_size == s["hidden_size"] and m.num_heads == s["num_heads"]
        assert m.out_channels == 4 and m.num_classes == 1000 and m.num_patches == (32 // int(patch)) ** 2
        assert m.mask_token is not None
        if family == "SD-DiT":
            assert len(m.blocks) == s["depth"] - 2 and len(m.decoder_blocks) == 2
            assert m.decoder_hidden_size == s["hidden_size"]
            assert m.cls_token is not None and m.head is not None and m.head.out_dim == 8192
        else:
            assert family == "MaskDiT" and len(m.blocks) == s["depth"]
            assert m.cls_token is None and m.head is None
            if size == "XL":
                assert len(m.decoder_blocks) == 8 and m.decoder_hidden_size == 512 and m.decoder_num_heads == 16
            else:
                assert len(m.decoder_blocks) == 2 and m.decoder_hidden_size == s["hidden_size"]
        n = count_params(m)
        assert n["total"] == n["encoder"] + n["decoder"] + n["head"] == sum(p.numel() for p in m.parameters())
        assert n["trainable"] < n["total"]

    with torch.device("meta"):
        over = SplitDiT_models["SD-DiT-S/2"](head_dim=0, encoder_depth=3, num_classes=5)
    assert over.head is None and len(over.blocks) == 3 and over.num_classes == 5

    table = format_param_table([f"{f}-S/{p}" for f in ("SD-DiT", "MaskDiT") for p in (2, 4, 8)])
    print("\n" + table)
    assert table.count("\n") == 7


def test_teacher_of_preset_on_meta_has_no_decoder():
    with torch.device("meta"):
        m = SplitDiT_models["SD-DiT-S/2"]()
    teacher = m.make_teacher()
    n_t = sum(p.numel() for p in teacher.parameters())
    n = count_params(m)
    assert n_t == n["encoder"] + n["head"]


# --------------------------------------------------------------------------------------------
# mixed precision
# --------------------------------------------------------------------------------------------


def test_bf16_autocast_forward_is_finite():
    model = randomize_(tiny()).train()
    x, t, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y, mask_ratio=0.5, return_tokens=True)
        plain = model.eval()(x, t, y)
    assert torch.isfinite(out.out).all() and torch.isfinite(out.head).all()
    assert torch.isfinite(plain).all() and plain.shape == (3, 4, 8, 8)
    (out.out.float().sum() + out.head.float().sum()).backward()
    assert torch.isfinite(model.blocks[0].attn.qkv.weight.grad).all()
