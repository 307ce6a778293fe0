import gzip
import struct

import numpy as np
import pytest
import torch

from sddit.data import EpochSampler, load_digits, load_fashion_mnist
from sddit.data.images import read_idx
from sddit.errors import DataError


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (7, 28, 28))
    labels = rng.integers(0, 10, (7,))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    ds = load_fashion_mnist(tmp_path, "test")
    assert ds.images.shape == (7, 1, 28, 28) and ds.num_classes == 10
    assert np.array_equal(ds.images[:, 0].numpy(), imgs) and np.array_equal(ds.labels.numpy(), labels)
    x, y = ds.batch(torch.arange(7))
    assert x.min() >= -1 and x.max() <= 1 and torch.allclose(x[0, 0], torch.from_numpy(imgs[0]).float() / 127.5 - 1)


def test_missing_and_truncated_files_are_clear(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")
    path = tmp_path / "x.gz"
    header = struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">II", 4, 4)
    with gzip.open(path, "wb") as f:
        f.write(header + b"\x00" * 10)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_digits_split_and_flip():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and train.shape == (1, 8, 8)
    x, _ = train.batch(torch.arange(4))
    xf, _ = train.batch(torch.arange(4), hflip=torch.tensor([True, False, True, False]))
    assert torch.equal(xf[0], x[0].flip(-1)) and torch.equal(xf[1], x[1])


def test_sampler_is_a_permutation_per_epoch_and_resumes():
    s = EpochSampler(10, 4, seed=1)
    first_epoch = torch.cat([s.next(), s.next()])
    assert len(set(first_epoch.tolist())) == 8  # no repeats within an epoch (tail of 2 dropped)
    state = s.state_dict()
    nxt = s.next()
    s2 = EpochSampler(10, 4, seed=1)
    s2.load_state_dict(state)
    assert torch.equal(s2.next(), nxt)
    assert s.epoch == 1 and not torch.equal(nxt, first_epoch[:4])  # reshuffled


def test_ranks_split_the_same_global_batch():
    single = EpochSampler(100, 8, seed=3)
    ranks = [EpochSampler(100, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(20):
        assert torch.equal(single.next(), torch.cat([r.next() for r in ranks]))


def test_padding_to_32_centres_the_images_on_black():
    from sddit.data import build_dataset

    small = load_digits("train")
    big = build_dataset("digits", "", "train", resolution=12)
    assert big.shape == (1, 12, 12) and len(big) == len(small)
    assert torch.equal(big.images[:, :, 2:10, 2:10], small.images)
    assert big.images[:, :, :2].sum() == 0 and big.images[:, :, :, 10:].sum() == 0
    x, _ = big.batch(torch.arange(4))
    assert x[:, :, 0, 0].eq(-1).all()  # the canvas is black in [-1, 1]
    with pytest.raises(DataError, match="resolution"):
        build_dataset("digits", "", "train", resolution=6)


def test_fmnist32_presets_have_256_tokens():
    from sddit.config import load_config

    for objective in ("dit", "maskdit", "sddit"):
        cfg = load_config(f"fmnist32_{objective}")
        assert cfg.objective == objective and cfg.data.resolution == 32
        assert (cfg.model.input_size // cfg.model.patch_size) ** 2 == 256
