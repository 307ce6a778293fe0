import pytest

from sddit.config import load_config
from sddit.errors import ConfigError


def test_default_preset_loads():
    cfg = load_config()
    assert cfg.objective == "dit" and cfg.data.dataset == "fashion_mnist"
    assert cfg.model.input_size % cfg.model.patch_size == 0


def test_base_chain_and_overrides():
    cfg = load_config("fmnist_sddit", ["train.lr=2e-4", "sddit.mask_ratio=0.3", "train.betas=0.9,0.95"])
    assert cfg.objective == "sddit"
    assert cfg.model.hidden_size == load_config("fmnist_dit").model.hidden_size  # inherited from base
    assert cfg.train.lr == 2e-4 and cfg.sddit.mask_ratio == 0.3 and cfg.train.betas == (0.9, 0.95)


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lrr=1"])
    msg = str(e.value)
    assert "unknown key 'train.lrr'" in msg and "train.lr" in msg and "train.batch_size" in msg
    with pytest.raises(ConfigError, match="unknown key 'bogus'.*objective"):
        load_config(None, ["bogus=1"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.max_steps=abc", "expects an integer"),
        ("train.max_steps=1.5", "expects an integer"),
        ("train.lr=fast", "expects a number"),
        ("train.compile=maybe", "expects true/false"),
        ("objective=gan", "choose one of dit, maskdit, sddit"),
        ("sddit.mask_ratio=1.5", "must be in [0, 1)"),
        ("model.patch_size=5", "not divisible"),
        ("train=3", "is a section"),
        ("lr", "must look like key=value"),
        ("eval.cfg_interval=5,0.3", "is empty: give lo < hi"),
        ("eval.cfg_interval=-1,3", "two noise levels >= 0"),
        ("eval.churn=-1", "a finite number >= 0"),
    ],
)
def test_bad_values_are_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="fmnist_dit"):
        load_config("no_such_preset")


@pytest.mark.parametrize(
    "name, params_m",
    [("imagenet256_dit_xl2", 675.1), ("imagenet256_maskdit_xl2", 712.1), ("imagenet256_sddit_xl2", 684.6)],
)
def test_imagenet_presets_build_the_paper_models(name, params_m):
    import torch

    from sddit.models import build_model

    cfg = load_config(name)
    assert cfg.data.dataset == "latents" and not cfg.data.hflip
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.ema_decay, cfg.train.precision) == (256, 1e-4, 0.9999, "bf16")
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.1)
    if cfg.objective == "sddit":
        assert model.head is not None and cfg.sddit.mask_ratio == 0.2
    if cfg.objective == "maskdit":
        assert cfg.maskdit.mask_ratio == 0.5 and len(model.decoder_blocks) == 8


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_learning_rate_schedules(schedule):
    from sddit.train.schedules import learning_rate

    cfg = load_config(
        "digits_tiny",
        [
            f"train.lr_schedule={schedule}",
            "train.lr=1e-3",
            "train.warmup_steps=10",
            "train.max_steps=110",
            "train.lr_final=0.1",
        ],
    )
    lrs = [learning_rate(cfg, s) for s in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up
    if schedule == "constant":
        assert lrs[10:] == [1e-3] * 101
    else:
        assert lrs[10] == pytest.approx(1e-3) and lrs[110] == pytest.approx(1e-4)  # decays to lr * lr_final
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
        mid = 1e-4 + 0.9e-3 * (0.5 if schedule == "cosine" else 0.5)  # both halfway at the midpoint
        assert lrs[60] == pytest.approx(mid)
        quarter = 7.75e-4 if schedule == "linear" else 1e-4 + 0.45e-3 * (1 + 0.5**0.5)  # a quarter into the decay
        assert lrs[35] == pytest.approx(quarter)
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_config("digits_tiny", ["train.lr_schedule=step"])


def test_learning_rate_decay_can_start_late():
    from sddit.train.schedules import learning_rate

    cfg = load_config(
        "digits_tiny",
        [
            "train.lr_schedule=linear",
            "train.lr=1e-3",
            "train.warmup_steps=10",
            "train.max_steps=100",
            "train.lr_decay_start=0.8",
        ],
    )
    lrs = [learning_rate(cfg, s) for s in range(101)]
    assert lrs[10:81] == [1e-3] * 71  # stable until 80% of the run
    assert lrs[90] == pytest.approx(0.5e-3) and lrs[100] == pytest.approx(0.0)
