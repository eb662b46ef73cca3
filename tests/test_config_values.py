"""Configuration values: every numeric key reads the forms a Python user writes."""

from __future__ import annotations

from pathlib import Path

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
    cfg = load_config("moco_v2_cifar", ["train.log_every=9007199254740993"])
    assert cfg.train.log_every == 9007199254740993


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
    with pytest.raises(UserError, match="looc.plus_plus only applies to method=looc"):
        load_config("moco_v2_cifar", ["looc.plus_plus=true"])
    with pytest.raises(UserError, match=r"looc.plus_plus, looc.z0_positives=?.* only apply to"):
        load_config("moco_v2_cifar", ["looc.plus_plus=true", "looc.z0_positives=k0"])
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


def test_a_missing_relative_base_names_both_places_it_looked(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: parent.yaml\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        load_config("sub/child.yaml")
    message = str(info.value)
    assert "base: parent.yaml not found" in message
    assert f"({Path('sub') / 'parent.yaml'})" in message  # next to the including file
    assert f"({tmp_path / 'parent.yaml'})" in message  # the working directory


def test_the_shipped_experiment_yamls_load_from_any_folder(tmp_path, monkeypatch):
    """experiments/cifar_stem_cpu.yaml names its base relative to itself, not to the repository
    root (``base: experiments/cifar_cpu.yaml`` loaded only from there)."""
    monkeypatch.chdir(tmp_path)
    experiments = Path(__file__).parents[1] / "experiments"
    for path in sorted(experiments.glob("*.yaml")):
        cfg = load_config(str(path))
        assert cfg.name == path.stem, path
    assert load_config(str(experiments / "cifar_stem_cpu.yaml")).optim.batch_size == 128


@pytest.mark.parametrize("base", ["5", "[demo]", "{name: demo}", "''"])
def test_a_base_that_is_not_a_name_is_one_clear_error(tmp_path, base):
    path = tmp_path / "b.yaml"
    path.write_text(f"base: {base}\n")
    with pytest.raises(UserError, match="'base:' must be a preset name or the path of a YAML"):
        load_config(str(path))


@pytest.mark.parametrize(
    "override,kept",
    [("name=2024-01-01", "2024-01-01"), ("name=0.10", "0.10"), ("name=010", "010")],
)
def test_text_keys_keep_the_override_as_typed(override, kept):
    assert load_config(None, [override]).name == kept
    assert load_config(None, ["data.path=~"]).data.path == "~"
    assert load_config(None, ["train.resume=null"]).train.resume is None


def test_a_date_in_a_yaml_file_is_shown_as_written_not_as_python(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("name: 2024-01-01\n")
    with pytest.raises(UserError) as info:
        load_config(str(path))
    assert "YAML reads 2024-01-01 as a date; quote it: '2024-01-01'" in str(info.value)
    assert "datetime" not in str(info.value)


def test_a_circular_base_chain_is_named_on_resolved_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "loop.yaml").write_text("base: ../x/loop.yaml\n")
    with pytest.raises(UserError, match=r"circular 'base:' chain: x/loop.yaml -> x/loop.yaml;"):
        load_config("x/loop.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match=r"chain: a.yaml -> b.yaml -> a.yaml;"):
        load_config("a.yaml")


@pytest.mark.parametrize(
    "text,kind",
    [
        ("optim: [ {lr: 0.1} ]\n", "a list"),
        ("data: null\n", "null"),
        ("model: 5\n", "the number 5"),
    ],
)
def test_a_section_that_is_not_a_mapping_names_the_file(tmp_path, text, kind):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    section = text.split(":")[0]
    with pytest.raises(UserError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"in {path}: '{section}' must be a section of KEY: VALUE settings")
    assert f"got {kind}" in message and "KEY=VALUE" not in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_config_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="holds no settings"):
        load_config(str(path))


def test_an_empty_config_name_is_refused(capsys):
    from contrastlab.cli import main

    with pytest.raises(UserError, match="the config name is empty"):
        load_config("")
    assert main(["config", "--config", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the config name is empty") and len(err.splitlines()) == 1


def test_looc_settings_in_a_yaml_file_on_a_moco_run_warn(tmp_path, capsys):
    import yaml

    from contrastlab.config import config_to_dict

    (tmp_path / "lp.yaml").write_text("method: moco\nlooc: {plus_plus: true}\n")
    lines = _warnings(capsys, "--config", str(tmp_path / "lp.yaml"))
    assert len(lines) == 1 and "looc.plus_plus=true has no effect" in lines[0]
    # a file that leaves the method to the command line serves LooC runs too: no warning
    shared = tmp_path / "shared.yaml"
    shared.write_text("looc: {z0_positives: k0}\n")
    assert _warnings(capsys, "--config", str(shared)) == []
    experiments = Path(__file__).parents[1] / "experiments"
    assert _warnings(capsys, "--config", str(experiments / "cifar_cpu.yaml")) == []
    (tmp_path / "looc.yaml").write_text(
        "method: looc\nlooc: {augmentations: [rotation]}\ntrain: {knn_space: z0}\n"
    )
    (tmp_path / "moco.yaml").write_text("base: looc.yaml\nmethod: moco\ntrain: {knn_space: z}\n")
    lines = _warnings(capsys, "--config", str(tmp_path / "moco.yaml"))
    assert len(lines) == 1 and "looc.augmentations=[rotation] has no effect" in lines[0]
    assert _warnings(capsys, "--config", str(tmp_path / "looc.yaml")) == []
    # a saved config.yaml names every key: those at their defaults are not the user's settings
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config_to_dict(load_config("moco_v2_cifar"))))
    assert _warnings(capsys, "--config", str(saved)) == []


def _warnings(capsys, *args) -> list[str]:
    from contrastlab.cli import main

    assert main(["config", *args]) == 0
    err = capsys.readouterr().err
    return err.splitlines()


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["ft.alpha_pos=5"], "ft.alpha_pos=5.0 has no effect: ft.pos=none"),
        (["ft.granularity_pos=element"], "ft.granularity_pos=element has no effect: ft.pos=none"),
        (["ft.alpha_neg=1"], "ft.alpha_neg=1.0 has no effect: ft.neg=none"),
        (["ft.granularity_neg=sample"], "ft.granularity_neg=sample has no effect: ft.neg=none"),
        (["optim.milestones=[5]"], "optim.milestones=[5] has no effect: the cosine schedule"),
        (["optim.schedule=step", "optim.milestones=[]"], "optim.milestones is empty"),
        (["optim.schedule=step", "optim.epochs=5", "optim.milestones=[5,9]"], ">= optim.epochs=5"),
        (
            ["ft.pos=extrapolate", "ft.start_epoch=3", "optim.epochs=3"],
            "ft.start_epoch=3 has no effect: ft.start_epoch counts from 0, so Feature "
            "Transformation would start in epoch 4, and the run ends with epoch 3",
        ),
        (["optim.warmup_epochs=2", "optim.epochs=2"], "optim.warmup_epochs=2 >= optim.epochs=2"),
        (["model.head=linear", "model.head_hidden=64"], "model.head_hidden=64 has no effect"),
        (["data.path=/data"], "data.path=/data has no effect: data.name=synthetic"),
        (["data.holdout_fraction=0.2"], "data.holdout_fraction=0.2 has no effect"),
        (["augment.recipe=none", "augment.hue=0.3"], "augment.hue=0.3 has no effect"),
        (["augment.recipe=none", "augment.blur=true"], "augment.blur=true has no effect"),
        (["augment.recipe=none", "augment.crop_scale_min=0.5"], "crop_scale_min=0.5 has no"),
        (
            ["method=looc", "looc.augmentations=[rotation]", "augment.recipe=none"]
            + ["augment.grayscale_p=0.5"],
            "augment.grayscale_p=0.5 has no effect: augment.recipe=none has no colour jitter",
        ),
        (
            ["method=looc", "looc.augmentations=[rotation]", "augment.rotation=true"],
            "augment.rotation=true has no effect: rotation is one of looc.augmentations",
        ),
        (["train.knn_every=0", "train.knn_val_fraction=0.3"], "knn_val_fraction=0.3 has no"),
        (["scores.record=false", "scores.bins=50"], "scores.bins=50 has no effect"),
        (
            ["ft.neg=interpolate", "ft.renormalize_negatives=false"],
            "ft.renormalize_negatives=false has no effect: ft.renormalize=false",
        ),
        (
            ["ft.pos=extrapolate", "ft.distribution=uniform", "ft.alpha_pos=3"],
            "ft.alpha_pos=3.0 has no effect: ft.distribution=uniform",
        ),
        (
            ["ft.pos=extrapolate", "ft.granularity=sample", "ft.granularity_pos=step"],
            "ft.granularity=sample has no effect: every transformed side has its own",
        ),
        (["data.skip_bad_images=true"], "data.skip_bad_images=true has no effect"),
        (["data.in_memory=false"], "data.in_memory=false has no effect"),
        (  # not only on the downloaded sets: on an image folder too
            ["data.name=imagefolder", "data.path=.", "data.synthetic_train=100"],
            "data.synthetic_train=100 has no effect: it sets the synthetic dataset",
        ),
    ],
)
def test_a_setting_without_effect_is_one_warning_line(capsys, overrides, expected):
    lines = _warnings(capsys, *overrides)
    assert len(lines) == 1 and lines[0].startswith("warning: ") and expected in lines[0], lines


def test_settings_without_effect_in_a_yaml_file_warn_and_preset_defaults_do_not(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: moco_v1\noptim: {epochs: 1}\nmodel: {head_hidden: 64}\n")
    lines = _warnings(capsys, "--config", str(path), "data.path=.")
    # moco_v1's milestones [120, 160] are beyond epochs=1, but they are the preset's
    assert len(lines) == 1 and "model.head_hidden=64 has no effect" in lines[0], lines
    assert _warnings(capsys, "--config", "demo", "optim.epochs=1") == []  # demo's warm-up


def test_a_batch_norm_group_of_one_sample_is_refused():
    with pytest.raises(UserError, match="gives batch norm 1 sample per group; it needs at least 2"):
        load_config(None, ["optim.batch_size=1"])
    with pytest.raises(UserError, match="raise optim.batch_size to at least 16"):
        load_config(None, ["optim.batch_size=8", "model.bn_splits=8"])
    assert load_config(None, ["optim.batch_size=16", "model.bn_splits=8"])


def test_the_synthetic_dataset_needs_16_px():
    with pytest.raises(UserError, match="too small for the synthetic dataset.*>= 16"):
        load_config(None, ["data.image_size=8"])
    assert load_config(None, ["data.image_size=16"]).data.image_size == 16
    assert load_config(None, ["dataset=cifar10", "data.image_size=8"]).data.image_size == 8


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "optim:\n  lr: [0.1\nmodel: {}\n",
            "line 3, column 6: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence that starts at line 2, column 7)",
        ),
        ("optim:\n  lr: 0.1\n epochs: 2\n", "line 3, column "),
        (
            'name: "x\n',
            "line 2, column 1: found unexpected end of stream (while scanning a "
            "quoted scalar that starts at line 1, column 7)",
        ),
        ("optim:\n\tlr: 0.1\n", "line 2, column 1: found character '\\t'"),
    ],
)
def test_a_yaml_error_says_where_in_the_file(tmp_path, text, where):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="is not valid YAML") as caught:
        load_config(str(path))
    assert where in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["augment.recipe=moco_v2", "augment.hue=0.3", "augment.blur=true"],
        ["method=looc", "looc.augmentations=[color]", "augment.recipe=none", "augment.hue=0.3"],
        ["method=looc", "looc.augmentations=[rotation]", "augment.recipe=none"]
        + ["augment.crop_scale_min=0.5", "augment.blur=true"],
        ["ft.pos=extrapolate", "ft.neg=interpolate", "ft.granularity=sample"]
        + ["ft.granularity_pos=step"],
        ["ft.neg=interpolate", "ft.renormalize=true", "ft.renormalize_negatives=false"],
        ["train.knn_every=2", "train.knn_val_fraction=0.3"],
    ],
)
def test_settings_that_take_effect_do_not_warn(capsys, overrides):
    assert _warnings(capsys, *overrides) == []


def test_errors_about_keys_of_yaml_files_name_the_file_and_line(tmp_path):
    """An unknown key or a bad value in a YAML file was reported without the file: in a base:
    chain nobody could tell which file to fix (a duplicate key already named its file)."""
    base = tmp_path / "base.yaml"
    base.write_text("base: demo\noptim:\n  epochs: 3\n")
    top = tmp_path / "top.yaml"
    top.write_text("base: base.yaml\nfoo:\n  bar: 1\n")
    with pytest.raises(UserError) as err:
        load_config(str(top))
    assert str(err.value).startswith(f"{top}, line 2: unknown config key 'foo'")

    base.write_text("base: demo\noptim:\n  epochs: 3\n  lr: fast\n")
    top.write_text("base: base.yaml\noptim:\n  epochs: 4\n")  # the bad value is the base's
    with pytest.raises(UserError) as err:
        load_config(str(top))
    assert str(err.value).startswith(f"{base}, line 4: optim.lr must be a number")

    top.write_text("base: base.yaml\noptim:\n  lr: -1\n  warp: 2\n")  # nested unknown key
    with pytest.raises(UserError) as err:
        load_config(str(top))
    assert str(err.value).startswith(f"{top}, line 4: unknown config key 'optim.warp'")
    top.write_text("base: base.yaml\noptim:\n  lr: -1\n")  # a range of the including file
    with pytest.raises(UserError) as err:
        load_config(str(top))
    assert str(err.value).startswith(f"{top}, line 3: optim.lr must be")

    # an override replaces the file's value: its error names no file
    with pytest.raises(UserError) as err:
        load_config(str(top), ["optim.lr=-2"])
    assert str(err.value).startswith("optim.lr must be")
    assert load_config(str(top), ["optim.lr=0.5"]).optim.lr == 0.5


# ----------------------------------------------------------------------------------------------
# A config built or changed in Python: config.validate runs the checks of load_config
# ----------------------------------------------------------------------------------------------


def _python_config(key: str, value) -> Config:
    cfg = Config()
    section, _, name = key.rpartition(".")
    setattr(_get(cfg, section) if section else cfg, name, value)
    return cfg


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("moco.queue_size", -5, "moco.queue_size must be an integer in [1, 4194304], got -5"),
        ("ft.pos", "bogus", "ft.pos='bogus' is not valid; valid values: none, extrapolate"),
        ("method", "simclr", "method='simclr' is not valid"),
        ("optim.batch_size", 1, "optim.batch_size=1 with model.bn_splits=1 gives"),
        ("train.knn_space", "z0", "train.knn_space='z0' is not a feature space of this moco"),
        ("name", "../x", "name must be a relative folder name"),
    ],
)
def test_validate_checks_a_python_config_as_a_loaded_one(key, value, message):
    from contrastlab.config import config_from_dict, config_to_dict, validate

    cfg = _python_config(key, value)
    with pytest.raises(UserError) as caught:
        validate(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError) as saved:  # the same line as a saved config of these values
        config_from_dict(config_to_dict(cfg))
    assert str(saved.value) == str(caught.value)


@pytest.mark.parametrize(
    "key,value,message",
    [
        # a conversion would make these valid, but the object itself would reach the code
        ("moco.queue_size", 5.0, "moco.queue_size must be an integer in [1, 4194304], got 5.0"),
        ("optim.lr", "0.1", "optim.lr must be a number > 0, got '0.1' (str)"),
        ("name", 5, "name must be a relative folder name"),
        ("scores.record", 1, "scores.record must be true or false, got 1"),
        ("optim.milestones", [120.0], "optim.milestones[0] must be an integer >= 1, got 120.0"),
    ],
)
def test_validate_refuses_a_value_of_the_wrong_type(key, value, message):
    from contrastlab.config import validate

    with pytest.raises(UserError) as caught:
        validate(_python_config(key, value))
    assert message in str(caught.value)


def test_validate_accepts_what_a_python_user_writes():
    from contrastlab.config import validate

    cfg = Config()
    cfg.optim.lr = 1  # an int for a float
    cfg.method = "looc"
    cfg.looc.augmentations = ("color", "rotation")  # a tuple for a list
    cfg.train.knn_space = "rotation"
    validate(cfg)
    cfg.data.name = "imagefolder"
    with pytest.raises(UserError, match="needs data.path"):
        validate(cfg)
    validate(cfg, need_data_path=False)  # a model needs no data
    cfg.moco = {"queue_size": 10}
    with pytest.raises(UserError, match="section 'moco' must be a MocoConfig, got dict"):
        validate(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        # before: "optim.milestones[] must be an integer, got 'x'" (no index, no range)
        ("optim.milestones=[10,x]", "optim.milestones[1] must be an integer >= 1, got 'x'"),
        ("optim.milestones=[10,0]", "got [10, 0]: optim.milestones[1] is 0"),
        (
            "looc.augmentations=[color,colour]",
            "got ['color', 'colour']: looc.augmentations[1] is 'colour' (did you mean 'color'?)",
        ),
    ],
)
def test_an_item_of_a_list_is_named_by_its_index(override, message):
    with pytest.raises(UserError) as caught:
        load_config(None, ["method=looc", override])
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.milestones", [10, "x"], "optim.milestones[1] must be an integer >= 1, got 'x'"),
        ("optim.milestones", [10, 20.0], "optim.milestones[1] must be an integer >= 1, got 20.0"),
        ("optim.milestones", [10, -1], "got [10, -1]: optim.milestones[1] is -1"),
        ("looc.augmentations", ["color", 5], "looc.augmentations[1] must be one of color, rot"),
    ],
)
def test_validate_names_the_item_of_a_list_that_is_wrong(key, value, message):
    from contrastlab.config import validate

    with pytest.raises(UserError) as caught:
        validate(_python_config(key, value))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "override, meant",
    [
        ("train.out_dir=/tmp/x", "'out_dir'"),  # was 'train.log_every'
        ("train.seed=1", "'seed'"),  # was 'train.resume'
        ("optim.name=x", "'name' or 'data.name'"),
        ("model.method=looc", "'method'"),
        ("log_every=5", "'train.log_every'"),  # was no suggestion
        ("train.lr=0.1", "'optim.lr'"),  # was 'train.amp'
        ("data.nmae=x", "'data.name'"),  # a typo: the closest key of the section, as before
    ],
)
def test_a_key_in_the_wrong_place_is_pointed_to_where_it_is(override, meant):
    with pytest.raises(UserError) as err:
        load_config("demo", [override])
    assert f"(did you mean {meant}?)" in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["method=looc", "moco.symmetric=true"],
            "moco.symmetric=true is not defined for LooC (the keys k_i are tied to the query "
            "view); set moco.symmetric=false",
        ),
        (
            ["train.resume=auto", "train.overwrite=true"],
            "train.resume=auto and train.overwrite=true contradict each other",
        ),
    ],
)
def test_keys_that_contradict_each_other_are_refused_by_config_and_validate_alike(
    overrides, message, capsys
):
    """These were refused only when ``train`` built the model or claimed the run directory:
    ``contrastlab config`` printed the config and ``validate`` returned None."""
    from contrastlab.cli import main
    from contrastlab.config import validate

    assert main(["config", "--config", "demo", *overrides]) == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith("error: ") and message in said and len(said.splitlines()) == 1
    cfg = Config()
    for key, value in (o.split("=") for o in overrides):
        section, name = key.split(".") if "." in key else ("", key)
        value = {"true": True, "false": False}.get(value, value)
        setattr(getattr(cfg, section) if section else cfg, name, value)
    with pytest.raises(UserError) as caught:
        validate(cfg)
    assert said == f"error: {caught.value}"


def test_validate_accepts_numpy_scalars_and_stores_python_numbers():
    """Sizes and rates often come from arrays: numpy.int64(32) was refused with "must be an
    integer in [8, 4096], got 32". They are accepted, and stored as Python's numbers so that
    config.yaml and checkpoints can hold them."""
    import numpy as np
    import yaml

    from contrastlab.config import config_to_dict, validate

    cfg = Config()
    cfg.data.image_size = np.int64(32)
    cfg.seed = np.int32(3)
    cfg.optim.lr = np.float32(0.05)
    cfg.optim.milestones = [np.int64(5), 7]
    cfg.scores.record = np.bool_(False)
    validate(cfg)
    assert (cfg.data.image_size, cfg.seed, cfg.optim.lr) == (32, 3, 0.05)
    assert type(cfg.data.image_size) is int and type(cfg.optim.lr) is float
    assert cfg.optim.milestones == [5, 7] and cfg.scores.record is False
    assert yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))["optim"]["lr"] == 0.05
    # a value of the wrong kind says its type, rather than reading as a valid one
    cfg.data.image_size = np.float64(32.5)
    with pytest.raises(UserError, match=r"got 32\.5 \(numpy\.float64\)$"):
        validate(cfg)
    cfg.data.image_size = np.float64(32.0)  # a float, however whole: shown as one
    with pytest.raises(UserError, match=r"got 32\.0 \(numpy\.float64\)$"):
        validate(cfg)
    # numpy's text is a str: a name taken from an array is a name
    cfg.data.image_size, cfg.name = 32, np.str_("run-a")
    validate(cfg)
    assert cfg.name == "run-a" and type(cfg.name) is str


def test_a_view_recipe_takes_a_numpy_image_size():
    import numpy as np

    from contrastlab.views.recipes import ViewRecipe

    recipe = ViewRecipe(image_size=np.int64(32), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert recipe.image_size == 32


@pytest.mark.parametrize(
    "override, takes",
    [
        ("data.views=", "one of batched, per_image"),
        ("data.views_compile=", "true or false"),
        ("data.image_size=", "an integer in [8, 4096]"),
        ("optim.lr= ", "a number > 0"),
        ("looc.augmentations=", "a list, e.g. [a, b] or a,b"),
        ("method=", "one of moco, looc"),
        ("name=", "a relative folder name inside out_dir"),
        ("out_dir=", "a non-empty folder path"),
    ],
)
def test_an_empty_value_on_the_command_line_says_so_and_what_the_key_takes(override, takes):
    # Before: "data.views=null is not valid", "got null": a null the user never typed
    key = override.split("=")[0]
    with pytest.raises(UserError) as err:
        load_config("demo", [override])
    assert str(err.value).startswith(f"{key}= has no value; give {takes}")
    assert "null" not in str(err.value)


@pytest.mark.parametrize("override", ["train.amp=", "data.path=", "ft.granularity_pos="])
def test_an_empty_value_is_null_where_the_key_takes_null(override):
    cfg = load_config("demo", [override])
    section, key = override.rstrip("=").split(".")
    assert getattr(getattr(cfg, section), key) is None


@pytest.mark.parametrize("override", ["data.path=", "data.path=null", "ft.granularity_pos="])
def test_null_where_null_is_the_default_is_no_setting_to_warn_about(override, capsys):
    """``data.path=`` on the synthetic set warned that the path "has no effect ... to train on
    the folder", naming a folder nobody gave; a real path there is still warned about."""
    from contrastlab.cli import main

    assert main(["config", "--config", "demo", override]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["config", "--config", "demo", "data.path=/x"]) == 0
    assert "warning: data.path=/x has no effect" in capsys.readouterr().err
