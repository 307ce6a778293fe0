"""Tests for sddit.models.dit: official key layout, exact maths against an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sddit.models import (
    DIT_SIZES,
    DiT,
    DiT_models,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
)

# Published sizes (DiT paper, Table 1): depth, width, heads, params in millions for patch 2.
PAPER = {"S": (12, 384, 6, 33), "B": (12, 768, 12, 130), "L": (24, 1024, 16, 458), "XL": (28, 1152, 16, 675)}

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)


def expected_shapes(depth, D, p, C, learn_sigma=True, num_classes=1000, input_size=32, dropout=True, mlp_ratio=4.0):
    """State-dict shapes of the official DiT, derived from the architecture description."""
    out = 2 * C if learn_sigma else C
    T = (input_size // p) ** 2
    H = int(D * mlp_ratio)
    s = {
        "pos_embed": (1, T, D),
        "x_embedder.proj.weight": (D, C, p, p),
        "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256),
        "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D),
        "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (num_classes + int(dropout), D),
        "final_layer.linear.weight": (p * p * out, D),
        "final_layer.linear.bias": (p * p * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.adaLN_modulation.1.bias": (2 * D,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        s.update(
            {
                b + "attn.qkv.weight": (3 * D, D),
                b + "attn.qkv.bias": (3 * D,),
                b + "attn.proj.weight": (D, D),
                b + "attn.proj.bias": (D,),
                b + "mlp.fc1.weight": (H, D),
                b + "mlp.fc1.bias": (H,),
                b + "mlp.fc2.weight": (D, H),
                b + "mlp.fc2.bias": (D,),
                b + "adaLN_modulation.1.weight": (6 * D, D),
                b + "adaLN_modulation.1.bias": (6 * D,),
            }
        )
    return s


@pytest.mark.parametrize("name", list(DiT_models))
def test_preset_keys_and_shapes(name):
    size, patch = name[len("DiT-") :].split("/")
    depth, D, heads, _ = PAPER[size]
    assert DIT_SIZES[size] == dict(depth=depth, hidden_size=D, num_heads=heads)
    with torch.device("meta"):
        model = DiT_models[name]()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_shapes(depth, D, int(patch), 4)
    assert model.num_heads == heads and model.patch_size == int(patch) and len(model.blocks) == depth


@pytest.mark.parametrize("size", list(PAPER))
def test_param_counts_match_paper(size):
    with torch.device("meta"):
        model = DiT_models[f"DiT-{size}/2"]()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - PAPER[size][3]) < 1.0  # the paper rounds loosely (B: 130.5M listed as 130M)


def test_xl2_exact_param_count():
    # The official DiT-XL/2 (256px, learn_sigma) has 675,129,632 entries in its state dict.
    with torch.device("meta"):
        model = DiT_models["DiT-XL/2"]()
    assert sum(p.numel() for p in model.state_dict().values()) == 675_129_632


# ---------------------------------------------------------------------------------------------
# Independent reference forward, written from the published formulas
# ---------------------------------------------------------------------------------------------


def ref_layernorm(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def ref_gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def ref_silu(x):
    return x / (1 + torch.exp(-x))


def ref_linear(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def ref_timestep_features(t, dim=256, max_period=10000.0):
    half = dim // 2
    freqs = torch.tensor([max_period ** (-k / half) for k in range(half)], dtype=torch.float64)
    args = t.double()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).float()


def ref_pos_embed(D, G):
    """Token n = (row r, col c) in raster order; first D/2 channels encode c, last D/2 encode r."""
    q = D // 4
    omega = [1.0 / 10000 ** (k / q) for k in range(q)]
    table = np.zeros((G * G, D))
    for r in range(G):
        for c in range(G):
            n = r * G + c
            for k in range(q):
                table[n, k] = math.sin(c * omega[k])
                table[n, q + k] = math.cos(c * omega[k])
                table[n, 2 * q + k] = math.sin(r * omega[k])
                table[n, 3 * q + k] = math.cos(r * omega[k])
    return table


def ref_forward(sd, x, t, y, depth, heads, p, out_ch):
    B, C, Hh, Ww = x.shape
    G = Hh // p
    # Patchify: token (r, c) = flattened (C, p, p) patch, projected by the conv weight as a matrix.
    patches = x.reshape(B, C, G, p, G, p).permute(0, 2, 4, 1, 3, 5).reshape(B, G * G, C * p * p)
    w = sd["x_embedder.proj.weight"]
    D = w.shape[0]
    h = patches @ w.reshape(D, -1).T + sd["x_embedder.proj.bias"]
    h = h + torch.from_numpy(ref_pos_embed(D, G)).float()[None]
    temb = ref_linear(ref_silu(ref_linear(ref_timestep_features(t), sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    d = D // heads
    for i in range(depth):
        b = f"blocks.{i}."
        mod = ref_linear(ref_silu(c), sd, b + "adaLN_modulation.1")
        sh1, sc1, g1, sh2, sc2, g2 = [mod[:, j * D : (j + 1) * D][:, None] for j in range(6)]
        a = ref_layernorm(h) * (1 + sc1) + sh1
        qkv = ref_linear(a, sd, b + "attn.qkv")
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
        outs = []
        for head in range(heads):
            sl = slice(head * d, (head + 1) * d)
            att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
            outs.append(att @ v[..., sl])
        h = h + g1 * ref_linear(torch.cat(outs, dim=-1), sd, b + "attn.proj")
        m = ref_layernorm(h) * (1 + sc2) + sh2
        h = h + g2 * ref_linear(ref_gelu_tanh(ref_linear(m, sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    mod = ref_linear(ref_silu(c), sd, "final_layer.adaLN_modulation.1")
    sh, sc = mod[:, :D][:, None], mod[:, D:][:, None]
    tok = ref_linear(ref_layernorm(h) * (1 + sc) + sh, sd, "final_layer.linear")  # (B, T, p*p*out)
    # Unpatchify: token (r, c) feature index (i * p + j) * out + ch -> pixel (ch, r*p + i, c*p + j).
    img = torch.zeros(B, out_ch, G * p, G * p)
    for r in range(G):
        for cc in range(G):
            for i in range(p):
                for j in range(p):
                    f0 = (i * p + j) * out_ch
                    img[:, :, r * p + i, cc * p + j] = tok[:, r * G + cc, f0 : f0 + out_ch]
    return img


def randomized_tiny(seed=0, **over):
    torch.manual_seed(seed)
    cfg = {**TINY, **over}
    model = DiT(**cfg).eval()
    with torch.no_grad():
        for _name, prm in model.named_parameters():
            if prm.requires_grad:  # everything but pos_embed, incl. zero-initialised adaLN / final
                prm.normal_(0.0, 0.3 if prm.dim() > 1 else 0.1)
                if prm.dim() > 1:
                    prm.div_(math.sqrt(prm[0].numel()) / 2)
    return model, cfg


def tiny_inputs(cfg, B=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg["in_channels"], cfg["input_size"], cfg["input_size"], generator=g)
    t = torch.randn(B, generator=g) * 2.0  # EDM c_noise = ln(sigma)/4: continuous, can be negative
    y = torch.randint(0, cfg["num_classes"], (B,), generator=g)
    return x, t, y


def test_forward_matches_reference():
    model, cfg = randomized_tiny()
    x, t, y = tiny_inputs(cfg)
    with torch.no_grad():
        out = model(x, t, y)
        ref = ref_forward(
            model.state_dict(), x, t, y, cfg["depth"], cfg["num_heads"], cfg["patch_size"], 2 * cfg["in_channels"]
        )
    assert out.shape == (4, 8, 8, 8)
    assert out.abs().mean() > 0.1  # not trivially zero
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg_channels", [3, None])
def test_forward_with_cfg_matches_reference(cfg_channels):
    model, cfg = randomized_tiny(seed=2)
    x, t, y = tiny_inputs(cfg, B=4, seed=3)
    y = torch.cat([y[:2], torch.full((2,), cfg["num_classes"])])  # [cond; null]
    scale = 4.0
    with torch.no_grad():
        got = model.forward_with_cfg(x, t, y, scale, cfg_channels=cfg_channels)
        xx = torch.cat([x[:2], x[:2]])
        raw = ref_forward(model.state_dict(), xx, t, y, cfg["depth"], cfg["num_heads"], cfg["patch_size"], 8)
    n = 3 if cfg_channels == 3 else 4
    guided = raw[2:, :n] + scale * (raw[:2, :n] - raw[2:, :n])
    want = torch.cat([torch.cat([guided, guided]), raw[:, n:]], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    if cfg_channels == 3:  # default is the official 3-channel quirk
        torch.testing.assert_close(model.forward_with_cfg(x, t, y, scale), got)


def test_timestep_embedding_cos_then_sin():
    t = torch.tensor([0.0, 0.37, -1.5, 250.0])
    got = TimestepEmbedder.timestep_embedding(t, 256)
    torch.testing.assert_close(got, ref_timestep_features(t), atol=1e-5, rtol=1e-5)
    assert TimestepEmbedder.timestep_embedding(t, 7).shape == (4, 7)


# ---------------------------------------------------------------------------------------------
# Init, pos_embed, labels, state dict, pixel space, errors
# ---------------------------------------------------------------------------------------------


def test_zero_output_at_init():
    torch.manual_seed(0)
    model = DiT(**TINY)
    x, t, y = tiny_inputs(TINY)
    out = model(x, t, y)
    assert torch.count_nonzero(out) == 0
    # adaLN-Zero: the modulation and output layers are zero, the rest is not.
    assert torch.count_nonzero(model.blocks[0].adaLN_modulation[1].weight) == 0
    assert model.blocks[0].attn.qkv.weight.abs().sum() > 0
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.005


def test_pos_embed_fixed_sincos():
    model = DiT(**TINY)
    assert isinstance(model.pos_embed, torch.nn.Parameter) and not model.pos_embed.requires_grad
    assert "pos_embed" not in [n for n, p in model.named_parameters() if p.requires_grad]
    want = torch.from_numpy(ref_pos_embed(64, 4)).float()[None]
    torch.testing.assert_close(model.pos_embed.data, want, atol=1e-6, rtol=0)
    pe = get_2d_sincos_pos_embed(32, 3, cls_token=True, extra_tokens=1)
    assert pe.shape == (10, 32) and np.all(pe[0] == 0)


def test_label_table_and_dropout():
    model = DiT(**TINY)
    assert model.y_embedder.embedding_table.weight.shape[0] == TINY["num_classes"] + 1
    assert LabelEmbedder(10, 8, 0.0).embedding_table.num_embeddings == 10
    emb = LabelEmbedder(10, 8, 0.5)
    labels = torch.arange(6)
    forced = emb.token_drop(labels, torch.tensor([1, 0, 1, 0, 0, 1]))
    assert forced.tolist() == [10, 1, 10, 3, 4, 10]
    torch.manual_seed(123)
    drops = torch.rand(6) < 0.5  # the official draw from the global RNG
    torch.manual_seed(123)
    assert emb.token_drop(labels).tolist() == torch.where(drops, 10, labels).tolist()
    assert torch.equal(emb(labels, train=False), emb.embedding_table.weight[labels])


def test_state_dict_round_trip():
    a, _ = randomized_tiny(seed=5)
    torch.manual_seed(6)
    b = DiT(**TINY).eval()
    res = b.load_state_dict(a.state_dict(), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    x, t, y = tiny_inputs(TINY)
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, y), b(x, t, y), atol=0, rtol=0)


def test_pixel_space_forward_backward():
    torch.manual_seed(0)
    model = DiT(
        input_size=28,
        patch_size=4,
        in_channels=1,
        hidden_size=32,
        depth=1,
        num_heads=2,
        num_classes=10,
        learn_sigma=False,
    ).train()
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(0, 0.02)
    x = torch.randn(3, 1, 28, 28)
    out = model(x, torch.rand(3), torch.randint(0, 10, (3,)))
    assert out.shape == (3, 1, 28, 28)
    out.square().mean().backward()
    assert model.x_embedder.proj.weight.grad is not None and model.pos_embed.grad is None
    for p in (2, 7):
        m = DiT(input_size=28, patch_size=p, in_channels=1, hidden_size=16, depth=1, num_heads=2, num_classes=10)
        assert m(x, torch.rand(3), torch.zeros(3, dtype=torch.long)).shape == (3, 2, 28, 28)


def test_grad_checkpointing_same_result():
    model, cfg = randomized_tiny(seed=7)
    model.train()
    x, t, y = tiny_inputs(cfg)
    outs, grads = [], []
    for ckpt in (False, True):
        model.zero_grad()
        model.grad_checkpointing = ckpt
        torch.manual_seed(0)  # same label-dropout draw in both passes
        out = model(x, t, y)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(model.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_wrong_input_size_raises():
    model = DiT(**TINY)
    t, y = torch.zeros(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="built for 8x8"):
        model(torch.randn(2, 4, 16, 16), t, y)
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(2, 4, 9, 9), t, y)
    with pytest.raises(ValueError, match="not divisible"):
        PatchEmbed(28, 8, 1, 16)


def test_exact_gelu_option_changes_the_blocks_but_not_the_weights():
    """model.gelu=exact swaps DiT's tanh GELU for the erf form: same parameters, nearly the same function."""
    from sddit.models import DiT

    torch.manual_seed(0)
    a = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    b = DiT(
        input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10, gelu="exact"
    )
    b.load_state_dict(a.state_dict())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        b.load_state_dict(a.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([0.1, 0.5]), torch.tensor([1, 2])
    out_a, out_b = a.eval()(x, t, y), b.eval()(x, t, y)
    assert not torch.equal(out_a, out_b)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0.05 * out_a.abs().max().item())
    assert b.blocks[0].mlp.act.approximate == "none" and a.blocks[0].mlp.act.approximate == "tanh"


def test_compile_blocks_keeps_names_and_values():
    """train.compile_scope=blocks: every block compiled in place, the parameter names unchanged (no
    `_orig_mod.`), the same forward and gradients as eager (fp32), and a copy made before stays eager."""
    import copy

    from sddit.config import load_config
    from sddit.models import build_model, compile_blocks

    torch.manual_seed(0)
    net = build_model(load_config("digits_tiny"))
    with torch.no_grad():  # off adaLN-Zero's identity, so the blocks' gradients are not all zero
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eager = copy.deepcopy(net)
    assert compile_blocks(net) == len(net.blocks) > 0
    assert all(b._compiled_call_impl is not None for b in net.blocks)
    assert all(b._compiled_call_impl is None for b in eager.blocks)
    assert list(net.state_dict()) == list(eager.state_dict())
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    outs = []
    for m in (net, eager):
        out = m.eval()(x, t, y)  # eval: no random label drop, so both see the same labels
        out.square().mean().backward()
        outs.append((out.detach(), m.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    assert outs[1][1].abs().max() > 1e-4  # a gradient worth comparing
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-3, atol=1e-5)
