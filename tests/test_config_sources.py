"""Where settings come from: section mappings on the command line, YAML forms that mean something
else than they look, ``<<:`` merge keys, ``~`` in ``base:``, ``--config`` given twice, keys put at
the top level that belong to a section, and milestones checked on new runs only."""

from __future__ import annotations

import pytest

from contrastlab.cli import main
from contrastlab.config import (
    config_from_dict,
    config_to_dict,
    load_config,
    warn_repeated_keys,
)
from contrastlab.errors import UserError
from contrastlab.train import Trainer


def _file(tmp_path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _refused(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- a section's mapping on the command line merges as a YAML file's section does ------------------


def test_a_section_mapping_override_keeps_the_sections_other_keys(tmp_path):
    cfg = load_config("moco_v2_cifar", ["optim={lr: 0.1}"])
    assert cfg.optim.lr == 0.1
    assert cfg.optim.batch_size == 512 and cfg.optim.weight_decay == 5e-4  # the preset's
    as_file = load_config(_file(tmp_path, "base: moco_v2_cifar\noptim: {lr: 0.1}\n"))
    assert config_to_dict(cfg) == config_to_dict(as_file)


def test_a_section_mapping_override_keeps_earlier_overrides_of_that_section():
    cfg = load_config("demo", ["optim.lr=0.1", "optim={epochs: 3}"])
    assert (cfg.optim.lr, cfg.optim.epochs) == (0.1, 3)


def test_keys_of_a_section_mapping_override_count_as_typed_one_by_one(capsys):
    with pytest.raises(UserError, match="looc.plus_plus only applies to method=looc"):
        load_config("demo", ["looc={plus_plus: true}"])
    load_config("demo", ["optim={milestones: [1]}"], warn_unused=True)
    assert "optim.milestones=[1] has no effect: the cosine schedule" in capsys.readouterr().err
    warn_repeated_keys(["optim={lr: 0.1}", "optim.lr=0.2"])
    assert "optim.lr is given twice (0.1, then 0.2)" in capsys.readouterr().err


# -- YAML values that YAML 1.1 reads otherwise than they look --------------------------------------


@pytest.mark.parametrize(
    "text, said",
    [
        ("name: 2024\n", "name is text, but YAML reads 2024 as a number; quote it: '2024'"),
        ("name: 010\n", "YAML reads 010 as a number; quote it: '010'"),
        (
            "name: yes\n",
            "YAML reads yes as the boolean true (YAML 1.1 takes yes, no, on and off as",
        ),
        ("out_dir: off\n", "out_dir is text, but YAML reads off as the boolean false"),
        ("data:\n  path: 1.0e+3\n", "data.path is text, but YAML reads 1.0e+3 as a number"),
        (
            "data:\n  path: ~\n",
            "YAML reads ~ alone as null; write null for no value, or quote it for the home folder: '~'",
        ),
        ("train: {resume: on}\n", "train.resume is text, but YAML reads on as the boolean true"),
        (
            "name: ~\n",
            "name is text, but YAML reads ~ alone as null, which name cannot be; quote it: '~'",
        ),
        ("out_dir: ~\n", "null, which out_dir cannot be; quote it for the home folder: '~'"),
    ],
)
def test_a_text_key_written_as_a_number_or_boolean_is_refused_with_quotes_to_use(
    tmp_path, text, said
):
    message = _refused(_file(tmp_path, text))
    assert said in message and "c.yaml, line " in message
    if not text.startswith(("data", "out_dir")):  # the home folder is a path's only
        assert "home folder" not in message


def test_a_quoted_text_value_is_kept_as_written(tmp_path):
    cfg = load_config(_file(tmp_path, "name: '010'\nout_dir: 'off'\ndata: {path: \"~\"}\n"))
    assert (cfg.name, cfg.out_dir, cfg.data.path) == ("010", "off", "~")
    assert load_config(None, ["name='2024'"]).name == "2024"  # quoted as in a YAML file
    assert load_config(None, ["data.path='null'"]).data.path == "null"
    assert "data.path is text" in _refused(None, ["data={path: yes}"])


@pytest.mark.parametrize(
    "override, said",
    [
        ("optim.epochs=010", "optim.epochs: YAML 1.1 reads 010 as the octal number 8"),
        ("optim.batch_size=0x10", "optim.batch_size: YAML 1.1 reads 0x10 as 16, a form Python"),
        ("seed=0b11", "seed: YAML 1.1 reads 0b11 as 3"),
        ("optim.lr=1:30.5", "optim.lr: YAML 1.1 reads 1:30.5 as 90.5"),
        ("optim.milestones=[010, 20]", "optim.milestones[0]: YAML 1.1 reads 010 as the octal"),
        ("optim={epochs: 010}", "optim.epochs: YAML 1.1 reads 010 as the octal number 8"),
    ],
)
def test_number_forms_python_reads_otherwise_are_refused(tmp_path, override, said):
    assert said in _refused(None, [override])
    key, value = override.split("=", 1)
    if not value.startswith("{"):  # the same in a YAML file, with its line
        section, _, leaf = key.rpartition(".")
        text = f"{section}:\n  {leaf}: {value}\n" if section else f"{leaf}: {value}\n"
        message = _refused(_file(tmp_path, text))
        assert said in message and message.startswith(f"{tmp_path / 'c.yaml'}, line ")


def test_plain_number_forms_are_taken():
    cfg = load_config(None, ["optim.epochs=1_000", "optim.lr=.5", "seed=0", "optim.momentum=0.0"])
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.seed, cfg.optim.momentum) == (1000, 0.5, 0, 0.0)


# -- YAML merge keys --------------------------------------------------------------------------------


def test_yaml_merge_keys_work_and_the_mappings_own_keys_win(tmp_path):
    text = (
        "base: demo\n"
        "train: &fast\n  knn_every: 0\n  log_every: 5\n"
        "optim:\n  <<: [{epochs: 3, lr: 0.5}, {weight_decay: 0.001}]\n  lr: 0.1\n"
        "scores:\n  <<: {bins: 50}\n"
    )
    cfg = load_config(_file(tmp_path, text))
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.weight_decay) == (3, 0.1, 0.001)
    assert (cfg.scores.bins, cfg.train.log_every, cfg.name) == (50, 5, "demo")
    refused = _refused(_file(tmp_path, "optim:\n  <<: {epochs: 010}\n"))
    assert "optim.epochs: YAML 1.1 reads 010 as the octal number 8" in refused
    twice = _refused(_file(tmp_path, "optim:\n  <<: {epochs: 3}\n  lr: 0.1\n  lr: 0.2\n"))
    assert "key 'lr' appears twice" in twice


# -- ~ in base: ---------------------------------------------------------------------------------------


def test_a_base_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "mine.yaml").write_text("base: demo\noptim: {epochs: 3}\n")
    cfg = load_config(_file(tmp_path, "base: ~/mine.yaml\nseed: 7\n"))
    assert (cfg.name, cfg.optim.epochs, cfg.seed) == ("demo", 3, 7)
    assert load_config("~/mine.yaml").optim.epochs == 3


# -- keys at the top level that belong to a section ---------------------------------------------------


@pytest.mark.parametrize(
    "text, meant",
    [
        ("dataset: cifar10\n", "'dataset' (did you mean 'data.name'?)"),
        ("data: {dataset: cifar10}\n", "'data.dataset' (did you mean 'data.name'?)"),
        ("epochs: 3\n", "'epochs' (did you mean 'optim.epochs'?)"),
        ("batch_size: 64\n", "'batch_size' (did you mean 'optim.batch_size'?)"),
        ("lr: 0.1\n", "'lr' (did you mean 'optim.lr'?)"),
    ],
)
def test_a_key_at_the_wrong_level_of_a_yaml_file_names_the_dotted_key(tmp_path, text, meant):
    assert f"unknown config key {meant}" in _refused(_file(tmp_path, text))


# -- --config given twice -----------------------------------------------------------------------------


def test_two_config_files_are_refused_naming_both(tmp_path, capsys):
    mine = _file(tmp_path, "base: demo\nseed: 3\n")
    with pytest.raises(SystemExit) as info:
        main(["config", "--config", "demo", "-c", mine])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"--config is given twice (demo, then {mine})" in err and "'base: demo'" in err
    assert main(["config", "-c", "demo", "--config", "demo"]) == 0  # the same one twice


def test_one_config_file_spelt_two_ways_is_read_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "seed: 3\n")
    assert (
        main(
            [
                "config",
                "--config",
                "c.yaml",
                "-c",
                "./c.yaml",
                "--config",
                f"../{tmp_path.name}/c.yaml",
            ]
        )
        == 0
    )
    assert "seed: 3" in capsys.readouterr().out


def test_two_presets_are_refused_without_asking_to_edit_a_preset(capsys):
    with pytest.raises(SystemExit):
        main(["config", "--config", "moco_v2_cifar", "--config", "moco_v1"])
    err = capsys.readouterr().err
    assert "--config is given twice (moco_v2_cifar, then moco_v1)" in err
    assert "in moco_v1" not in err and "give one --config" in err
    assert "write a YAML file with 'base: moco_v2_cifar'" in err


# -- optim.milestones: sorted and distinct on a new run --------------------------------------------


@pytest.mark.parametrize("given, fix", [("[160, 120]", "[120, 160]"), ("[120, 120]", "[120]")])
def test_unsorted_or_repeated_milestones_are_refused(tmp_path, given, fix):
    message = _refused(None, ["optim.schedule=step", f"optim.milestones={given}"])
    assert f"optim.milestones={given} must list each epoch once, in increasing order" in message
    assert message.endswith(f"write {fix}")
    in_file = _refused(_file(tmp_path, f"optim:\n  schedule: step\n  milestones: {given}\n"))
    assert in_file.startswith(f"{tmp_path / 'c.yaml'}, line 3: optim.milestones=")


def test_a_stored_config_with_unsorted_milestones_is_still_read():
    stored = config_to_dict(load_config(None))
    stored["optim"]["milestones"] = [160, 120, 120]
    assert config_from_dict(stored).optim.milestones == [160, 120, 120]  # eval, report, analyze


def test_a_run_trained_with_unsorted_milestones_resumes_but_a_new_one_is_refused(
    tiny_config, monkeypatch
):
    settings = ["optim.schedule=step", "optim.milestones=[2, 1]", "train.knn_every=0"]
    with monkeypatch.context() as m:  # a run trained before milestones were checked
        m.setattr("contrastlab.train.check_milestones", lambda cfg: None)
        Trainer(tiny_config(*settings, "optim.epochs=1", "name=old", "train.resume=auto")).fit()
    resumed = Trainer(tiny_config(*settings, "optim.epochs=2", "name=old", "train.resume=auto"))
    assert resumed.fit().epochs == 2
    with pytest.raises(UserError, match=r"optim.milestones=\[2, 1\] must list each epoch once"):
        Trainer(tiny_config(*settings, "name=new", "train.resume=auto"))
    changed = ["optim.schedule=step", "optim.milestones=[2, 2]", "train.knn_every=0"]
    with pytest.raises(UserError, match="must list each epoch once"):
        Trainer(tiny_config(*changed, "optim.epochs=3", "name=old", "train.resume=auto"))
