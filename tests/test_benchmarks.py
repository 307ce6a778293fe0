"""Benchmark scripts run in a seconds-long smoke mode (figures are not asserted: they are not tests)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run benchmarks/<script> with args in a fresh process; fail with its stderr's tail unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_step_time_smoke(tmp_path):
    out = tmp_path / "st.json"
    proc = run_benchmark("step_time.py", "--smoke", "--json", str(out), timeout=300)
    assert [
        line.split("|")[1].strip()
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "ms" not in line and "---" not in line
    ] == ["dit", "maskdit", "sddit"]
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    rows = result["rows"]
    assert [r["objective"] for r in rows] == ["dit", "maskdit", "sddit"]
    assert result["repeats"] == 2 and rows[0]["ratio_min"] == rows[0]["ratio_max"] == 1.0  # dit against itself
    for r in rows:
        assert r["ms_per_step"] > 0 and r["peak_mb"] > 0 and r["batch"] == 16 and r["params_m"] > 0
        assert len(r["ms_per_step_runs"]) == 2 and r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
        assert r["precision"] in ("fp32", "bf16") and r["compile"] is False and r["device"] == "cpu"
    # the SD-DiT student carries a projection head the others do not have
    assert rows[2]["params_m"] > rows[0]["params_m"]


def test_dit_speed_smoke(tmp_path):
    out = tmp_path / "ds.json"
    run_benchmark("dit_speed.py", "--smoke", "--json", str(out), timeout=300)
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["official", "ours"] and all(r["ms_per_step"] > 0 for r in rows)
    assert rows[0]["params_m"] == rows[1]["params_m"] > 0 and rows[0]["batch"] == rows[1]["batch"] > 0  # same model


def test_convergence_smoke(tmp_path):
    run_benchmark("convergence.py", "--smoke", "--out", str(tmp_path))
    result = json.loads((tmp_path / "convergence.json").read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result["provenance"])
    # two FID points per method, at increasing steps, each a finite positive FID
    for method in ("dit", "maskdit", "sddit"):
        rows = [r for r in result["rows"] if r["method"] == method]
        assert len(rows) == 2 and rows[0]["step"] < rows[1]["step"] == rows[1]["max_steps"]
        assert all(0 < r["fid"] < 1e4 and r["train_seconds"] > 0 for r in rows)
    assert (tmp_path / "convergence.png").stat().st_size > 0
    assert "| sddit |" in (tmp_path / "convergence.md").read_text()


def test_throughput_smoke(tmp_path):
    out = tmp_path / "tp.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "throughput.py"),
            "--smoke",
            "--official",
            "--json",
            str(out),
            "--md",
            str(tmp_path / "tp.md"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    assert [r["objective"] for r in result["rows"]] == ["dit", "maskdit", "sddit"]
    for r in result["rows"]:
        assert r["gflop_per_img"] > 0 and r["sample_img_per_s"] > 0
        assert all(t["img_per_s"] > 0 and t["peak_mb"] > 0 for t in r["train"])
    # MaskDiT's encoder sees half the tokens: fewer FLOPs per training image than DiT (counted, not timed)
    flops = {r["objective"]: r["gflop_per_img"] for r in result["rows"]}
    assert flops["maskdit"] < flops["dit"]
    assert "official" in result["official"] and "| sddit |" not in result["official"]


def test_gpu_script_smoke(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert "| tiny sddit |" in (tmp_path / "gpu.md").read_text()


def test_recipe_sweep_smoke(tmp_path):
    """Two rows, one seed, in parallel child processes; the summary has every field the README reads."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "recipe.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "recipe.json").read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result) and result["baseline"] == "a"
    assert [(t["row"], t["eval"]) for t in result["table"]] == [("a", "default"), ("b", "default"), ("b", "steps=3")]
    for t in result["table"]:
        assert len(t["fid"]) == 1 and 0 < t["fid_mean"] < 1e4 and t["ms_per_step"] > 0 and t["images"] == 64
        assert "loss" in t["final_metrics"] and t["commits"] == [result["git_commit"]]  # each run records its code
    assert "vs_baseline" in result["table"][1] and "vs_baseline" not in result["table"][0]
    assert (tmp_path / "recipe.png").stat().st_size > 0 and "| b | steps=3 |" in (tmp_path / "recipe.md").read_text()
    # finished runs are kept: a second call has nothing left to run and writes the same table
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "recipe.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and json.loads((tmp_path / "recipe.json").read_text())["table"] == result["table"]
    # --summary-only runs nothing: seeds without runs are left out, the baseline can be chosen
    only = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "recipe.py"),
            "--smoke",
            "--out",
            str(tmp_path / "s"),
            "--work",
            str(tmp_path / "work"),
            "--seeds",
            "0,1",
            "--summary-only",
            "--baseline",
            "b",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert only.returncode == 0, only.stderr[-2000:]
    summary = json.loads((tmp_path / "s" / "recipe.json").read_text())
    assert summary["baseline"] == "b" and [len(t["fid"]) for t in summary["table"]] == [1, 1, 1]
    assert not (tmp_path / "work" / "a-seed1.json").exists()


def test_ablation_and_probe_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ablate.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--work",
            str(tmp_path / "work"),
            "--keep-weights",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result) and result["baseline"] == "dit"
    dit, sddit = result["table"]
    assert (dit["row"], sddit["row"]) == ("dit", "sddit") and dit["images"] == sddit["images"] == 64
    # the gradient-norm means per row: L_D reaches SD-DiT's encoder, DiT has no L_D at all
    assert sddit["final_metrics"]["mean_gradnorm_disc_encoder"] > 0
    assert not any(k.startswith("mean_gradnorm_disc") for k in dit["final_metrics"])
    assert (tmp_path / "ablation.png").stat().st_size > 0

    # the linear probe of the kept weights (benchmarks/probe.py)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "probe.py"),
            "--smoke",
            "--sweep",
            str(tmp_path / "work"),
            "--rows",
            "dit,sddit",
            "--seeds",
            "0",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(probe) and probe["baseline"] == "dit"
    assert [t["row"] for t in probe["table"]] == ["dit", "sddit", "raw-pixels"]
    for t in probe["table"][:2]:
        blocks, val = t["per_block"]["0.5"]["mean"][0], t["per_block"]["0.5"]["mean_val"][0]
        chosen = max(range(3), key=lambda i: (val[i], -i))  # the best validation accuracy picks the block
        assert len(blocks) == 3 and t["probe_acc"] == [blocks[chosen]] and t["best_block"] == [chosen + 1]
        assert 0 <= t["probe_acc"][0] <= 1
        assert t["seeds"] == [0] and len(t["per_block"]["0.5"]["spatial"][0]) == 3
    assert set(probe["table"][2]["per_sigma"]) == {"0.1", "0.5", "1.0"}
    assert (tmp_path / "probe.png").stat().st_size > 0 and "| raw-pixels |" in (tmp_path / "probe.md").read_text()

    # the liveness table of the same runs (benchmarks/liveness.py): SD-DiT's two terms, DiT has none
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "liveness.py"),
            "--sweep",
            str(tmp_path / "work"),
            "--rows",
            "dit,sddit",
            "--seeds",
            "0",
            "--at",
            "2,4",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    live = json.loads((tmp_path / "liveness.json").read_text())
    assert [(t["row"], t["term"]) for t in live["table"]] == [("sddit", "image"), ("sddit", "patch")]
    for t in live["table"]:
        end = t["per_seed"]["0"]["final_entropy"] / t["ln_k"]
        assert 0 < end <= 1 + 1e-6 and t["final_entropy_over_ln_k_mean"] == pytest.approx(end)
    assert (tmp_path / "liveness.png").stat().st_size > 0


def test_eval_speed_smoke(tmp_path):
    out = tmp_path / "e.json"
    run_benchmark("eval_speed.py", "--smoke", "--json", str(out))
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    assert [r["precision"] for r in result["rows"]] == ["fp32", "bf16"]
    assert all(r["fid"] > 0 and r["ms_per_image"] > 0 for r in result["rows"])
    assert result["speedup"] > 0 and abs(result["fid_rel_diff"]) < 1  # a ratio, not a percentage
    run_benchmark(
        "eval_speed.py", "--smoke", "--batch-sweep", "3,8", "--rounds", "1", "--json", str(tmp_path / "b.json")
    )
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [3, 8] and all(len(r["seconds"]) == 1 for r in rows)
    assert rows[0]["max_abs_diff_vs_first"] == 0.0
    # the same images' features whatever the batch (bf16 kernels may round apart)
    assert rows[1]["max_relative_l2_vs_first"] < 0.02


def test_guidance_smoke(tmp_path):
    out = tmp_path / "g.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "guidance.py"),
            "--smoke",
            "--json",
            str(out),
            "--set",
            "1.0",
            "--set",
            "2.0@0.3,5",
            "--set",
            "raw:2.0/3",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    assert [(r["weights"], r["cfg_scale"], r["cfg_interval"], r["steps"]) for r in result["results"]] == [
        ("ema", 1.0, [0.0, float("inf")], 18),
        ("ema", 2.0, [0.3, 5.0], 18),
        ("raw", 2.0, [0.0, float("inf")], 3),
    ]
    assert all(r["fid"] > 0 for r in result["results"]) and out.with_suffix(".md").exists()


def test_gpu_convergence_script_smoke(tmp_path):
    """The prepared GPU script's command line runs (on the CPU, tiny): the device run itself needs a lent GPU."""
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_convergence.sh"), "--smoke", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_convergence.json").read_text())
    assert {r["method"] for r in result["rows"]} == {"dit", "maskdit", "sddit"}
    assert (tmp_path / "gpu_convergence.png").stat().st_size > 0 and not (tmp_path / "gpu_convergence_runs").exists()


def test_latent_memory_smoke(tmp_path):
    """Two dataset sizes x both loaders, one child process each: every row reads the same 24 batches of 64."""
    out = tmp_path / "lm.json"
    proc = run_benchmark("latent_memory.py", "--smoke", "--in-memory", "--json", str(out), timeout=300)
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    rows = result["rows"]
    assert [(round(r["dataset_mb"]), r["mode"]) for r in rows] == [
        (8, "mmap"),
        (8, "memory"),
        (24, "mmap"),
        (24, "memory"),
    ]
    for r in rows:
        assert r["rows_read"] == 24 * 64 and r["epochs"] == round(24 * 64 / r["entries"], 2)
        assert r["rss_max_while_iterating_mb"] > 0
    assert "| 24 | mmap |" in proc.stdout


def test_convergence_refit_lands_on_the_budget():
    """The step plan re-fitted during a run spends exactly the budget left at the measured pace,
    MaskDiT's costlier unmasked fine-tune steps included, before and inside the fine-tune."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from convergence import recent_pace, refit_budget
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from sddit.config import load_config

    cfg = load_config("fmnist_dit", ["train.max_steps=1000"])
    refit_budget(cfg, 100, 50.0, 0.5, 150.0, 0.1, 2.0, 2)  # 100 s left at 0.5 s/step
    assert cfg.train.max_steps == 300  # DiT: no fine-tune, 200 more steps
    cfg = load_config("fmnist_maskdit", ["train.max_steps=1000", "maskdit.unmask_finetune_steps=100"])
    refit_budget(cfg, 100, 50.0, 0.5, 150.0, 0.1, 2.0, 2)
    n, ft = cfg.train.max_steps, cfg.maskdit.unmask_finetune_steps
    assert ft == round(0.1 * n)
    assert abs((n - 100 - ft) * 0.5 + ft * 2.0 * 0.5 - 100.0) < 1.0  # the seconds left, to a step
    cfg = load_config("fmnist_maskdit", ["train.max_steps=1000", "maskdit.unmask_finetune_steps=100"])
    refit_budget(cfg, 950, 140.0, 1.0, 150.0, 0.1, 2.0, 1)  # inside the fine-tune (it began at 900)
    assert cfg.train.max_steps == 960 and cfg.train.max_steps - cfg.maskdit.unmask_finetune_steps == 900
    cfg = load_config("fmnist_dit", ["train.max_steps=1000"])
    refit_budget(cfg, 100, 200.0, 0.5, 150.0, 0.0, 1.0, 2)
    assert cfg.train.max_steps == 102  # over budget already: one step per FID stop still to come
    history = [(0, 0.0), (10, 5.0), (20, 10.0), (30, 20.0)]
    assert recent_pace(history, 0, 15) == 1.0 and recent_pace(history, 0, 100) == 20.0 / 30
    assert recent_pace(history, 30, 100) is None


def test_sweep_paired_difference_uses_shared_seeds_only():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sweep import _paired

    base = {"seeds": [0, 1, 2], "fid": [9.0, 10.0, 11.0]}
    p = _paired({"seeds": [0, 1, 2, 3], "fid": [10.0, 12.0, 14.0, 99.0]}, base)  # seed 3: no partner
    assert p["paired_diffs"] == [1.0, 2.0, 3.0] and p["paired_diff"] == 2.0
    assert math.isclose(p["paired_se"], 1 / math.sqrt(3)) and p["paired_beyond"]
    # per-seed differences of both signs (+1, -2, +4): within the spread
    assert not _paired({"seeds": [0, 1, 2], "fid": [10.0, 8.0, 15.0]}, base)["paired_beyond"]
    assert _paired({"seeds": [2, 5], "fid": [1.0, 2.0]}, base) == {}  # one shared seed: no spread


def test_compile_scope_smoke(tmp_path):
    out = tmp_path / "c.json"
    run_benchmark("compile_scope.py", "--smoke", "--json", str(out))
    result = json.loads(out.read_text())
    assert {"command", "git_commit", "machine", "date"} <= set(result)
    assert sorted(r["scope"] for r in result["runs"]) == ["blocks", "model"]
    assert all(r["first_step_s"] > 0 and len(r["ms_per_step_blocks"]) == 3 for r in result["runs"])
