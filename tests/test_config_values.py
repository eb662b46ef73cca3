"""Configuration values: every numeric key reads the forms a Python user writes."""

from __future__ import annotations

import pytest

from contrastlab.config import Config, all_keys, load_config
from contrastlab.errors import UserError


def _numeric_kind(type_name: str) -> str | None:
    parts = set(type_name.split(" | "))
    if "float" in parts:
        return "float"
    if "int" in parts:
        return "int"
    return None


def _scientific_overrides() -> dict[str, object]:
    """key -> expected value, for every int or float key, written as 'MANTISSAe0' or '1e-1'.

    PyYAML reads none of these as numbers (YAML 1.1 wants a dot and a signed exponent), so each
    reaches the config as a string.
    """
    expected = {}
    for key, type_name, default in all_keys():
        kind = _numeric_kind(type_name)
        if kind is None or isinstance(default, bool):
            continue
        if default is None:
            expected[key] = 0.1 if kind == "float" else 10
        else:
            expected[key] = default
    return expected


def _text(value) -> str:
    if value == 0.1:
        return "1e-1"
    if value == 10 and isinstance(value, int):
        return "1e1"
    return f"{value!r}e0"


def _get(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_every_numeric_key_accepts_scientific_notation_on_the_command_line():
    expected = _scientific_overrides()
    assert "optim.weight_decay" in expected and "optim.epochs" in expected
    cfg = load_config(None, [f"{k}={_text(v)}" for k, v in expected.items()])
    for key, value in expected.items():
        got = _get(cfg, key)
        assert got == value and type(got) is type(value), key


def test_scientific_notation_in_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "base: moco_v2_cifar\n"
        "optim: {weight_decay: 5e-4, lr: 6E-2, epochs: 2e2, milestones: [1e2, 1.5e2]}\n"
        "moco: {queue_size: 4_096, temperature: .1}\n"
    )
    cfg = load_config(str(path), ["optim.warmup_epochs=1e0"])
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.lr == 0.06
    assert cfg.optim.epochs == 200 and isinstance(cfg.optim.epochs, int)
    assert cfg.optim.milestones == [100, 150] and cfg.optim.warmup_epochs == 1
    assert cfg.moco.queue_size == 4096 and cfg.moco.temperature == 0.1


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lr=fast", "optim.lr must be a number"),
        ("optim.lr=nan", r"optim.lr must be a number > 0, got 'nan'"),
        ("optim.weight_decay=.inf", r"optim.weight_decay must be a number >= 0, got inf"),
        ("optim.epochs=1.5e0", "optim.epochs must be an integer"),
        ("optim.epochs=1e400", "optim.epochs must be an integer"),
    ],
)
def test_numbers_that_are_not_numbers_or_not_finite_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_config("moco_v2_cifar", [override])


def test_large_integers_stay_exact():
    # 2**53 + 1 is the first integer a float64 cannot hold: it must not go through float
    cfg = load_config("moco_v2_cifar", ["moco.queue_size=9007199254740993"])
    assert cfg.moco.queue_size == 9007199254740993


def test_a_folder_given_as_the_config_file_is_called_a_folder(tmp_path):
    from contrastlab.config import load_config
    from contrastlab.errors import UserError

    with pytest.raises(UserError, match="is a folder; give a YAML file or a preset"):
        load_config(str(tmp_path))


def test_a_misspelt_nested_key_gets_its_full_dotted_suggestion():
    from contrastlab.config import load_config
    from contrastlab.errors import UserError

    with pytest.raises(UserError, match=r"did you mean 'optim\.lr'\?"):
        load_config("demo", ["optim.lrr=0.1"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["optim.lr=0.1", "optim.lr=0.2"], "optim.lr is given twice (0.1, then 0.2)"),
        (["dataset=synthetic", "data.name=cifar10"], "data.name is given twice"),
    ],
)
def test_a_key_given_twice_with_different_values_warns(overrides, message, capsys):
    from contrastlab.cli import main

    assert main(["config", "-c", "demo", *overrides]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: ") and message in err and len(err.splitlines()) == 1
    assert main(["config", "-c", "demo", "optim.lr=0.1", "optim.lr=0.1"]) == 0
    assert capsys.readouterr().err == ""


def test_looc_settings_on_a_moco_run_are_refused_not_ignored():
    with pytest.raises(UserError, match="looc.plus_plus only apply to method=looc"):
        load_config("moco_v2_cifar", ["looc.plus_plus=true"])
    assert load_config(
        "moco_v2_cifar", ["method=looc", "looc.plus_plus=true", "train.knn_space=z0"]
    )


def test_a_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. a run directory or a data folder called demo
    assert load_config("demo").name == "demo"
    (tmp_path / "mine.yaml").write_text("base: demo\nname: mine\n")
    assert load_config("mine.yaml").name == "mine"


def test_a_relative_base_is_read_next_to_the_file_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "parent.yaml").write_text("base: demo\noptim: {epochs: 3}\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\nname: child\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither file is in the working directory
    cfg = load_config(str(tmp_path / "sub" / "child.yaml"))
    assert (cfg.name, cfg.optim.epochs) == ("child", 3)
    # a base given relative to the working directory, as earlier files were written, still works
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub" / "old.yaml").write_text("base: parent.yaml\nname: old\n")
    assert load_config("sub/old.yaml").optim.epochs == 3


@pytest.mark.parametrize("base", ["5", "[demo]", "{name: demo}", "''"])
def test_a_base_that_is_not_a_name_is_one_clear_error(tmp_path, base):
    path = tmp_path / "b.yaml"
    path.write_text(f"base: {base}\n")
    with pytest.raises(UserError, match="'base:' must be a preset name or the path of a YAML"):
        load_config(str(path))
