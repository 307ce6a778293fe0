"""train.loggers: metrics.jsonl stays the record; tensorboard and wandb get the same scalars and the
sample grids; a missing package is a one-line error before training. wandb is not installable
offline, so its calls are checked against a stand-in module."""

import json
import sys
import types

import pytest

from sddit.cli import main
from sddit.config import load_config
from sddit.errors import ConfigError


def train_args(run, *extra):
    return [
        "train",
        "--config",
        "digits_tiny",
        "--run-dir",
        str(run),
        "--device",
        "cpu",
        "--no-eval",
        "--max-steps",
        "4",
        "--set",
        "train.log_every=2",
        "--set",
        "train.sample_every=2",
        "--set",
        "eval.grid_steps=2",
        "--set",
        "train.sample_per_class=1",
        *extra,
    ]


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loggers_key_parses_lists_and_refuses_unknown_names():
    assert load_config("digits_tiny").train.loggers == ("jsonl",)
    assert load_config("digits_tiny", ["train.loggers=jsonl,tensorboard"]).train.loggers == ("jsonl", "tensorboard")
    assert load_config("digits_tiny", ["train.loggers=[wandb]"]).train.loggers == ("wandb",)
    with pytest.raises(ConfigError, match="train.loggers has mlflow; choose from jsonl, tensorboard, wandb"):
        load_config("digits_tiny", ["train.loggers=[jsonl,mlflow]"])


def test_tensorboard_gets_the_jsonl_scalars_and_the_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    assert main(train_args(run, "--set", "train.loggers=[jsonl,tensorboard]")) == 0
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalar_records = [r for r in records(run) if "loss" in r]
    assert [r["step"] for r in scalar_records] == [2, 4]
    numeric = {k for r in scalar_records for k in r if k != "step"}
    assert numeric <= set(acc.Tags()["scalars"])
    for key in numeric:
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(key)] == [
            (r["step"], r[key]) for r in scalar_records
        ]
    assert [e.step for e in acc.Images("samples")] == [2, 4]
    assert [(r["step"], r["samples"]) for r in records(run) if "samples" in r] == [
        (2, "samples/step-0000002.png"),
        (4, "samples/step-0000004.png"),
    ]


@pytest.mark.parametrize("name,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_logger_package_is_one_line_before_training(tmp_path, capsys, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now raises ImportError
    run = tmp_path / name
    assert main(train_args(run, "--set", f"train.loggers=[jsonl,{name}]")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert f"pip install 'sddit[{name}]'" in err and f"remove {name} from train.loggers" in err
    assert not (run / "checkpoints").exists()


class FakeRun:
    def __init__(self, calls, **kwargs):
        self.calls = calls
        calls.append(("init", kwargs))

    def log(self, data, step):
        self.calls.append(("log", step, data))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: FakeRun(calls, **kwargs)
    module.Image = lambda path: ("Image", path)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_gets_the_jsonl_scalars_grids_and_resumes_its_run(tmp_path, fake_wandb):
    run = tmp_path / "wb"
    assert main(train_args(run, "--set", "train.loggers=[jsonl,wandb]", "--set", "train.wandb_project=proj")) == 0
    init = [c for c in fake_wandb if c[0] == "init"]
    assert len(init) == 1
    kwargs = init[0][1]
    assert kwargs["project"] == "proj" and kwargs["name"] == "wb" and kwargs["resume"] == "allow"
    assert kwargs["config"]["train"]["loggers"] == ["jsonl", "wandb"] and kwargs["dir"] == str(run)
    run_id = kwargs["id"]
    assert (run / "wandb_id.txt").read_text() == run_id
    logged = [(c[1], c[2]) for c in fake_wandb if c[0] == "log"]
    scalars = [(step, data) for step, data in logged if "loss" in data]
    expected = [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in records(run) if "loss" in r]
    assert scalars == expected
    images = [(step, data["samples"]) for step, data in logged if "samples" in data]
    assert images == [
        (2, ("Image", str(run / "samples" / "step-0000002.png"))),
        (4, ("Image", str(run / "samples" / "step-0000004.png"))),
    ]
    assert fake_wandb[-1] == ("finish",)

    fake_wandb.clear()
    assert main(train_args(run, "--set", "train.loggers=[jsonl,wandb]", "--max-steps", "6")) == 0  # resumes
    assert fake_wandb[0][1]["id"] == run_id  # the same wandb run continues
    assert [c[1] for c in fake_wandb if c[0] == "log" and "loss" in c[2]] == [6]
