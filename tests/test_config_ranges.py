"""Every config key has declared valid values, and a bad value is one line before any work."""

from __future__ import annotations

import pytest
import torch

from contrastlab.config import (
    VALID,
    config_from_dict,
    config_to_dict,
    declared_choices,
    key_hints,
    load_config,
)
from contrastlab.errors import UserError

KEYS = key_hints()


def test_every_key_declares_its_valid_values():
    """A new key needs a Literal/bool type or an entry in config.VALID (with its range)."""
    undeclared = [k for k, hint in KEYS.items() if k not in VALID and not declared_choices(hint)]
    assert not undeclared, f"add these keys to config.VALID: {undeclared}"
    assert not [k for k in VALID if k not in KEYS], "config.VALID names keys that do not exist"


def _bad_values(key: str) -> list:
    if key in VALID:
        return VALID[key].bad_values()
    return ["no-such-choice", 3]  # a Literal or a bool


def _cases():
    return [(key, value) for key in KEYS for value in _bad_values(key)]


@pytest.mark.parametrize("key,value", _cases(), ids=lambda v: str(v))
def test_each_key_refuses_a_bad_value_in_one_line(key, value):
    data = config_to_dict(load_config("moco_v2_cifar"))
    section, _, name = key.rpartition(".")
    (data[section] if section else data)[name] = value
    with pytest.raises(UserError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert key in message and len(message.splitlines()) == 1
    if key in VALID:
        assert VALID[key].describe() in message  # names the valid range


@pytest.mark.parametrize(
    "override",
    [
        "train.checkpoint_every=0",
        "train.log_every=0",
        "data.num_workers=-1",
        "optim.momentum=-1",
        "optim.weight_decay=-1",
        "augment.crop_scale_min=2",
        "train.knn_temperature=0",
        "data.image_size=1",
        "model.head_hidden=0",
        "train.knn_k=0",
        "train.max_steps_per_epoch=0",
        "train.knn_every=-1",
        "optim.warmup_epochs=-1",
        "ft.start_epoch=-1",
    ],
)
def test_the_values_found_by_the_reliability_run_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=key.replace(".", r"\.") + " must be"):
        load_config("moco_v2_cifar", [override])


@pytest.mark.parametrize(
    "override",
    [
        "model.width=64",
        "moco.queue_size=1000000000",
        "model.head_hidden=1000000000",
        "model.dim=100000000",
        "data.synthetic_train=1000000000",
        "data.synthetic_test=1000000000",
        "data.image_size=1e9",
    ],
)
def test_sizes_that_exhaust_memory_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=key.replace(".", r"\.") + r" must be .* in [\[(].*\]"):
        load_config(None, [override])


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("base: moco_v2_cifar\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(UserError, match="key 'lr' appears twice"):
        load_config(str(path))


def test_a_yaml_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_config(str(path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tiny_config):
    from contrastlab.train import Trainer

    with pytest.raises(UserError, match="train.device=cuda but no CUDA GPU"):
        Trainer(tiny_config("train.device=cuda"))
