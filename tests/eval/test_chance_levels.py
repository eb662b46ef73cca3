"""The chance level of the factor and rotation probes, in every table that shows their results.

It differs between rows (shape 10 %, colour 12.5 %, texture 25 %, rotation 25 % on ``synthetic``)
and was only in the JSON: the printed tables of ``eval factors``, ``eval rotation`` and ``eval all``
showed accuracies that read alike whatever their chance.
"""

from __future__ import annotations

import json

import pytest

from contrastlab.cli import main
from contrastlab.eval.results import chance_levels, fmt

EVAL = ["--workers", "0", "--no-progress", "--max-train", "64", "--max-test", "48"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from helpers import untrained_checkpoint

    return untrained_checkpoint(tmp_path_factory.mktemp("chance") / "c.pt")


def _rows(text: str) -> dict[str, list[str]]:
    """The markdown rows of a printed table, by their first cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("protocol", ["factors", "rotation"])
def test_the_printed_table_shows_each_rows_chance_level(checkpoint, tmp_path, capsys, protocol):
    out = tmp_path / f"{protocol}.json"
    capsys.readouterr()
    assert main(["eval", protocol, str(checkpoint), *EVAL, "--out", str(out)]) == 0
    rows = _rows(capsys.readouterr().out)
    result = json.loads(out.read_text())
    chance = chance_levels(result)
    keys = ["shape", "color", "texture", "rotation"] if protocol == "factors" else ["top1"]
    assert sorted(chance) == sorted(keys)
    assert rows["metric"] == ["accuracy (%)", "chance (%)"]
    for key in keys:
        assert rows[key] == [fmt(result["summary"][key]), fmt(chance[key])]
    if protocol == "rotation":
        assert chance["top1"] == 25.0
    else:  # the rows' chance levels differ: that is why each row shows its own
        assert chance["rotation"] == 25.0 and len(set(chance.values())) > 1


def test_eval_all_shows_the_chance_level_beside_each_probe(checkpoint, tmp_path, capsys):
    out = tmp_path / "all"
    argv = ["eval", "all", str(checkpoint), *EVAL, "--protocols", "knn,factors,rotation"]
    capsys.readouterr()
    assert main([*argv, "--k", "5", "--no-save", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "comparison.md").read_text()
    assert table.strip() in printed
    header, row = [r for label, r in _rows(table).items() if label in ("checkpoint", "run/c")]
    cells = dict(zip(header, row))
    entry = json.loads((out / "comparison.json").read_text())["entries"][0]
    for proto, keys in (
        ("factors", ["shape", "color", "texture", "rotation"]),
        ("rotation", ["top1"]),
    ):
        for key in keys:
            value, chance = entry["results"][proto][key], entry["chance"][proto][key]
            assert cells[f"{proto}: {key}"] == f"{fmt(value)} (chance {fmt(chance)})"
    assert "chance" not in cells["knn: top1"]  # no chance level recorded: the figure alone
