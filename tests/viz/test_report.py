"""The HTML report: self-contained, well-formed, and loading cleanly in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from html.parser import HTMLParser

import pytest

from contrastlab.errors import UserError
from contrastlab.viz.report import write_report


class _Collect(HTMLParser):
    """Tags, resource URLs and whether every opened element was closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.urls, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "poster") and value:
                self.urls.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_report_is_self_contained(fake_runs):
    path = write_report(fake_runs[1])
    assert path == fake_runs[1] / "report.html"
    text = path.read_text()
    parser = _Collect()
    parser.feed(text)
    parser.close()
    assert not parser.errors and not parser.stack
    assert parser.urls and all(u.startswith("data:image/png;base64,") for u in parser.urls)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert not re.search(
        r"(https?:)?//[a-z0-9]", text.split("<body>")[1].split("data:image")[0], re.I
    )
    assert "url(" not in text
    assert len(parser.urls) == 3  # training curves + the two score figures of space z
    assert "momentum" in text
    # the header's figure says when it was measured
    assert "kNN top-1 56.20% at epoch 3 of 3" in text
    assert "top1" in text and "settings.epochs" in text  # eval/linear.json, flattened
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text  # values are escaped
    assert "last.pt" in text


def test_report_missing_run(tmp_path):
    with pytest.raises(UserError):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="run directory"):
        write_report(tmp_path / "empty")


# -- headless Chromium, driven over the DevTools protocol -----------------------------------------


class _DevTools:
    """A minimal DevTools client: one WebSocket to the browser, page sessions in "flatten" mode."""

    def __init__(self, url: str):
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", url).groups()
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.split(b" ")[1] == b"101", head
        self.next_id, self.events = 0, []

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise RuntimeError("chromium closed the connection")
            data += chunk
        return data

    def _send_frame(self, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 1 << 16
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _recv_message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            if b0 & 0x0F in (0x9, 0xA):  # ping/pong: not part of a message
                continue
            data += payload
            if b0 & 0x80:
                return json.loads(data)

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send_frame(json.dumps(msg).encode())
        while True:
            reply = self._recv_message()
            if "method" in reply:
                self.events.append(reply)
            elif reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method):
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._recv_message())


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_in_headless_chromium(looc_run, tmp_path):
    path = write_report(looc_run, tmp_path / "report.html")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port, browser_path = port_file.read_text().split()
        dt = _DevTools(f"ws://127.0.0.1:{port}{browser_path}")
        target = dt.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.send(f"{domain}.enable", session=session)
        dt.send("Page.navigate", {"url": path.as_uri()}, session=session)
        dt.wait_event("Page.loadEventFired")
        result = dt.send(
            "Runtime.evaluate",
            {
                "expression": "JSON.stringify(Array.from(document.images).map("
                "i => [i.complete, i.naturalWidth, i.src.slice(0, 22)]))",
                "returnByValue": True,
            },
            session=session,
        )
        images = json.loads(result["result"]["value"])
        title = dt.send(
            "Runtime.evaluate",
            {"expression": "document.title", "returnByValue": True},
            session=session,
        )["result"]["value"]
        dt.sock.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert title == "contrastlab report: looc-ft"
    # training curves + (curves, distributions) for each of the two spaces, all decoded
    assert len(images) == 5
    assert all(
        done and width > 100 and src == "data:image/png;base64," for done, width, src in images
    )
    errors = [
        e
        for e in dt.events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert not errors, errors
    requests = [
        e["params"]["request"]["url"][:60]
        for e in dt.events
        if e["method"] == "Network.requestWillBeSent"
    ]
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def test_training_figure_ticks_are_whole_steps_and_epochs(tmp_path):
    """A run of a few steps used to get ticks such as 1.925 epochs or 4.5 steps."""
    from contrastlab.viz.report import training_figure
    from contrastlab.viz.score_plots import load_run

    run = tmp_path / "short"
    run.mkdir()
    lines = [
        {
            "event": "train",
            "epoch": 1,
            "step": s,
            "loss": 7.0 - s / 10,
            "lr": 0.1,
            "images_per_s": 50,
        }
        for s in (2, 4, 6)
    ]
    lines += [{"event": "epoch", "epoch": e, "step": 3 * e, "loss": 6.5} for e in (1, 2)]
    lines += [{"event": "knn", "epoch": e, "step": 3 * e, "knn_top1": 20.0 + e} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    fig = training_figure(load_run(run, scores=False))
    for ax in fig.axes:
        ax.figure.canvas.draw()
        assert all(float(t).is_integer() for t in ax.get_xticks()), (
            ax.get_title(),
            ax.get_xticks(),
        )


def test_eval_results_say_which_checkpoint_state_they_are_of(tmp_path, run_maker):
    """Results were shown next to the run's current epoch with no sign of the checkpoint's."""
    run = run_maker(tmp_path, "r", 0.99, 50.0, evals=True)  # 3 epochs; linear.json: no epoch
    for name, epoch, step in (("knn", 3, 18), ("knn-epoch-0001", 1, 6)):
        setup = {"checkpoint": f"{run}/checkpoints/{name}.pt", "epoch": epoch, "step": step}
        result = {"protocol": "knn", "summary": {"top1": 40.0}, "setup": setup}
        (run / "eval" / f"{name}.json").write_text(json.dumps(result))
    text = write_report(run).read_text()
    evaluation = text.split("<h2>Evaluation</h2>")[1].split("<h2>")[0]
    assert "epoch 1: an earlier state (the run is at epoch 3)" in evaluation
    assert "epoch 3 (the run&#x27;s last)" in evaluation
    assert "epoch not recorded" in evaluation  # linear.json predates setup.epoch
    summary = evaluation.split("</table>")[0]  # one row per result, with its epoch and step
    assert summary.count("<tr>") == 4 and '<td class="num">6</td>' in summary


def test_report_of_a_file_asks_for_the_run_directory(tmp_path, capsys, run_maker):
    """`report runs/x/checkpoints/last.pt` said "cannot write .../last.pt/report.html"."""
    from contrastlab.cli import main

    run = run_maker(tmp_path, "x", 0.99, None, evals=True)  # with checkpoints/last.pt
    assert main(["report", str(run / "checkpoints" / "last.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "last.pt names a checkpoint file, not a run directory; give its run directory" in err
    assert err.endswith(f"e.g. {run}")
    assert "cannot write" not in err and "\n" not in err
    # the scores command, also with an --out folder to check
    out = str(tmp_path / "figs")
    assert main(["scores", str(run / "config.yaml"), "--out", out]) == 2
    assert "config.yaml names a file, not a run directory" in capsys.readouterr().err
    # a checkpoint that does not exist is not called a run directory either
    for command in ("report", "scores"):
        assert main([command, str(tmp_path / "nope" / "checkpoints" / "last.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert "last.pt names a checkpoint file (which does not exist), not a run directory" in err
        assert err.endswith(
            f"the folder that holds config.yaml, metrics.jsonl and checkpoints/), e.g. {tmp_path / 'nope'}"
        )
    # --analysis given its analysis.json: the folder, before any figure is drawn
    (run / "analysis").mkdir()
    (run / "analysis" / "analysis.json").write_text("{}")
    given = run / "analysis" / "analysis.json"
    assert main(["report", str(run), "--analysis", str(given)]) == 2
    err = capsys.readouterr().err.strip()
    assert "analysis.json is a file; give the folder" in err and err.endswith(str(run / "analysis"))
    assert not (run / "report.html").exists()


def test_config_table_greys_out_settings_without_effect(tmp_path, run_maker):
    """An image-folder MoCo run without Feature Transformation listed data.synthetic_train,
    looc.augmentations and ft.* as if they set it up."""
    run = run_maker(
        tmp_path,
        "folder",
        0.99,
        None,
        config={
            "data.name": "imagefolder",
            "data.path": str(tmp_path),
            "data.synthetic_train": 5000,
            "looc.augmentations": ["color"],
            "ft.alpha_pos": 2.0,
        },
    )
    text = write_report(run).read_text()
    config = text.split("<h2>Configuration</h2>")[1].split("<h2>")[0]
    for key in ("synthetic_train", "augmentations", "alpha_pos"):
        assert f'<tr class="unused"><td>{key}</td>' in config, key
    for key in ("momentum", "name", "lr", "pos"):  # these do set the run up
        assert re.search(rf"<tr( class=\"changed\")?><td>{key}</td>", config), key
    assert "Grey: no effect on this run" in config
    # a run where everything applies says nothing about it
    plain = run_maker(tmp_path, "plain", 0.99, None)
    assert "Grey:" not in write_report(plain).read_text()


def test_null_settings_show_what_they_came_to(tmp_path):
    """`hue: null` said nothing about the hue jitter the run used (`config` comments it), and
    `amp null (= ...)`, `device auto` stayed unresolved while the figures' labels named what
    they came to: the table shows the value first, and the same one as the labels."""
    import yaml

    from contrastlab.config import config_to_dict, load_config
    from contrastlab.viz.score_plots import label_settings, load_run

    run = tmp_path / "run"
    run.mkdir()
    cfg = config_to_dict(load_config("moco_v2", ["data.path=x", "data.image_size=96"]))
    assert cfg["train"]["amp"] is None and cfg["train"]["device"] == "auto"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    start = {"event": "start", "epoch": 0, "step": 0, "world_size": 1, "device": "cuda"}
    (run / "metrics.jsonl").write_text(json.dumps({**start, "amp": True}) + "\n")
    text = write_report(run).read_text()
    config = text.split("<h2>Configuration</h2>")[1].split("<h2>")[0]
    assert (
        '<td>blur</td><td>true <span class="sub">(null: moco_v2 blurs only above 64 px)' in config
    )
    assert '<td>hue</td><td>0.1 <span class="sub">(null: the recipe&#x27;s hue jitter)' in config
    assert '<td>amp</td><td>true <span class="sub">(null: true on CUDA, false on the CPU)' in config
    assert '<td>device</td><td>cuda <span class="sub">(auto)' in config
    # YAML spellings, as the user writes them in a config, never Python's
    assert not re.search(r">(None|True|False)\b", config)
    assert "<td>shuffle_bn</td><td>true</td>" in config
    shown = label_settings(load_run(run))
    assert (shown["train.amp"], shown["augment.hue"], shown["train.device"]) == (True, 0.1, "cuda")


def test_the_report_shows_the_chance_level_beside_each_probe(tmp_path, run_maker):
    """A factor probe's result listed its chance levels only among the flattened details, far
    from the accuracies; a table puts them side by side, by eval factors' rule."""

    run = run_maker(tmp_path, "r", 0.99, 50.0, evals=True)
    details = {
        name: {"top1": top1, "chance": chance, "num_classes": n}
        for name, top1, chance, n in (("shape", 31.0, 10.0, 10), ("color", 90.0, 12.5, 8))
    }
    result = {
        "protocol": "factors",
        "summary": {"shape": 31.0, "color": 90.0},
        "details": details,
        "setup": {"checkpoint": f"{run}/checkpoints/last.pt"},
    }
    (run / "eval" / "factors.json").write_text(json.dumps(result))
    text = write_report(run).read_text()
    part = text.split("<h3>factors</h3>")[1].split("<h3>")[0]
    assert "<th>chance (%)</th>" in part
    assert '<td>shape</td><td class="num">31.00</td><td class="num">10.00</td>' in part
    assert '<td>color</td><td class="num">90.00</td><td class="num">12.50</td>' in part


def test_the_report_rounds_accuracies_as_eval_all_does(tmp_path, run_maker):
    """The report showed 35.2251 (6 significant digits) where `eval all`'s table showed 35.23:
    both print a result's headline metrics with one function, to 2 decimals."""
    from contrastlab.eval.compare import comparison_rows

    run = run_maker(tmp_path, "r", 0.99, 50.0, evals=True)
    summary = {"top1": 35.2251, "top5": 80.0}
    result = {"protocol": "knn", "summary": summary, "settings": {"lr": 0.0125}, "setup": {}}
    (run / "eval" / "knn.json").write_text(json.dumps(result))
    text = write_report(run).read_text()
    part = text.split("<h3>knn</h3>")[1].split("<h3>")[0]
    entry = {"label": "r", "dataset": "d", "num_test": 1, "results": {"knn": summary}}
    _, rows = comparison_rows([entry])
    assert rows[0][3:] == ["35.23", "80.00"]
    for key, shown in zip(summary, rows[0][3:]):
        assert f'<td>summary.{key}</td><td class="num">{shown}</td>' in part
    assert '<td>settings.lr</td><td class="num">0.0125</td>' in part  # not an accuracy


def test_a_training_state_the_checkpoint_does_not_record_reads_unknown():
    """A converted encoder's null step was shown as an empty cell, its null epoch as "not
    recorded", which is what an older analysis.json without the entries gets."""
    from contrastlab.viz.report import _state_value

    assert [_state_value({"epoch": None, "step": None}, k) for k in ("epoch", "step")] == [
        "unknown",
        "unknown",
    ]
    assert _state_value({"epoch": 3, "step": 30}, "step") == 30
    assert _state_value({}, "epoch") == "not recorded"


def test_the_report_says_how_many_processes_trained_the_run(tmp_path, run_maker):
    """A torchrun run's report said nothing of its processes, and its history spelt a changed
    setting as Python does (`ft.renormalize False -> True`)."""
    run = run_maker(tmp_path, "ddp", 0.99, None)  # optim.batch_size=16
    events = [
        {"event": "start", "epoch": 0, "step": 0, "world_size": 2, "device": "cuda", "amp": True}
    ]
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(e) + "\n" for e in events) + metrics.read_text())
    training = write_report(run).read_text().split("<h2>Training</h2>")[1].split("<h2>")[0]
    assert "Trained on cuda by 2 processes × batch 8 = 16 per step." in training
    resume = {"event": "resume", "epoch": 1, "step": 6, "world_size": 1}
    resume["changed"] = {"world_size": [2, 1], "ft.renormalize": [False, True]}
    start = {**events[0], "epoch": 1, "step": 6, "world_size": 1}
    metrics.write_text(metrics.read_text() + json.dumps(resume) + "\n" + json.dumps(start) + "\n")
    training = write_report(run).read_text().split("<h2>Training</h2>")[1].split("<h2>")[0]
    assert "Trained on cuda by 2→1 processes, batch 16 per step." in training
    assert "processes 2 -&gt; 1, ft.renormalize false -&gt; true" in training
    # a run without start events (an older one): its score record says it
    plain = run_maker(tmp_path, "plain", 0.99, None)
    assert "Trained by 1 process, batch 16 per step." in write_report(plain).read_text()
