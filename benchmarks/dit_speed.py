"""Our DiT training step against a plain fp32 eager run of the official DiT computation.

"Official computation" = the same DiT (our module is state-dict and output compatible with
facebookresearch/DiT) run the way the official train.py runs it on a CPU: fp32, eager, attention
as explicit softmax(QK^T/sqrt(d))V (timm's non-fused path), AdamW without flags, and denormal
floats left on. "Ours" = the same model and batch with what `sddit train` turns on: bf16 autocast
(CPU attention spelled out with an fp32 softmax), denormal flushing, and optionally torch.compile.
Both run the EDM loss on random data; only the step time differs, not the work.

    python benchmarks/dit_speed.py                     # depth 6, width 192, patch 4, 28x28x1, batch 128
    python benchmarks/dit_speed.py --preset DiT-S/2 --input-size 32 --in-channels 4 --batch 32
    python benchmarks/dit_speed.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from common import run_child, write_result


class _PlainAttention:
    """Swap-in forward for sddit.models.dit.Attention: explicit fp32 attention (no SDPA)."""

    @staticmethod
    def forward(self, x):  # noqa: ANN001 - bound as a method
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, T, d)
        attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, h, T, T)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(x)


def measure(args: argparse.Namespace) -> dict:
    import torch

    from sddit.diffusion import EDMPrecond, edm_loss, sample_sigma
    from sddit.models import DiT, DiT_models
    from sddit.models import layers as dit_module

    torch.set_num_threads(args.threads) if args.threads else None
    ours = args.variant.startswith("ours")
    torch.set_flush_denormal(ours)
    if not ours:
        dit_module.Attention.forward = _PlainAttention.forward
    torch.manual_seed(0)
    kw = dict(input_size=args.input_size, in_channels=args.in_channels, num_classes=10, learn_sigma=True)
    model = (
        DiT_models[args.preset](**kw)
        if args.preset
        else DiT(patch_size=args.patch, hidden_size=args.width, depth=args.depth, num_heads=args.heads, **kw)
    )
    net = EDMPrecond(model)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randn(args.batch, args.in_channels, args.input_size, args.input_size)
    y = torch.randint(0, 10, (args.batch,))

    def loss_fn(x0, y):
        sigma = sample_sigma(x0.shape[0])
        return edm_loss(net(x0 + sigma.view(-1, 1, 1, 1) * torch.randn_like(x0), sigma, y), x0, sigma).mean()

    step_loss = torch.compile(loss_fn) if args.variant == "ours+compile" else loss_fn
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ours):
            loss = step_loss(x0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    return {
        "variant": args.variant,
        "ms_per_step": 1000 * statistics.median(times),
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "batch": args.batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="", help="a DiT preset (e.g. DiT-S/2); default: the explicit sizes")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--variants", default="official,ours,ours+compile")
    p.add_argument("--smoke", action="store_true", help="tiny model, 1 step: checks the script runs")
    p.add_argument("--json", default=None)
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one variant in this process
    args = p.parse_args()
    if args.smoke:
        args.depth, args.width, args.heads, args.batch, args.steps, args.warmup = 1, 32, 2, 4, 1, 1
        args.variants = "official,ours"
    if args.variant:
        print(json.dumps(measure(args)))
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", variant] + [a for a in sys.argv[1:] if a != "--smoke"]
        if args.smoke:
            cmd += ["--depth", "1", "--width", "32", "--heads", "2", "--batch", "4", "--steps", "1", "--warmup", "1"]
        rows.append(run_child(cmd, variant))
    base = rows[0]["ms_per_step"]
    shape = args.preset or f"depth {args.depth}, width {args.width}, patch {args.patch}"
    print(f"{shape}, {args.input_size}x{args.input_size}x{args.in_channels}, batch {args.batch}, CPU")
    print("| variant | ms/step | speed-up vs official fp32 eager |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['ms_per_step']:.0f} | {base / r['ms_per_step']:.2f}x |")
    if args.json:
        write_result(args.json, sys.argv, rows=rows)


if __name__ == "__main__":
    main()
