"""Two processes on the CPU (gloo): MoCo under DDP agrees with one process on the global batch."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from contrastlab import distributed
from contrastlab.methods.moco import MoCo

WORLD = 2


def global_batches(steps: int, batch: int):
    g = torch.Generator().manual_seed(123)
    return [
        (torch.randn(batch, 3, 16, 16, generator=g), torch.randn(batch, 3, 16, 16, generator=g))
        for _ in range(steps)
    ]


def _worker(rank: int, port: int, configs: dict, steps: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        _say_warnings_and_errors(rank, out_dir)
        for name, cfg in configs.items():
            _train_steps(rank, cfg, steps, os.path.join(out_dir, f"{name}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _say_warnings_and_errors(rank: int, out_dir: str) -> None:
    """What each process prints of the warnings and errors of every kind, in rank<r>.json."""
    import contextlib
    import io
    import json

    from contrastlab.errors import UserError, warn

    def fails_on_rank_1():
        if rank == 1:
            raise UserError("an image of this process's share is unreadable")

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        warn("the same for every process")
        warn("this process's own", per_process=True)
        distributed.warn_where(rank == 1, "met by rank 1 alone")
        distributed.warn_where(True, "met by every process")
    try:
        distributed.raise_together(fails_on_rank_1)
        raised = None
    except UserError as e:
        raised = {"message": str(e), "every_process": e.every_process}
    with open(os.path.join(out_dir, f"said-rank{rank}.json"), "w") as f:
        json.dump({"stderr": err.getvalue(), "raised": raised}, f)


def _train_steps(rank: int, cfg, steps: int, out_file: str) -> None:
    # The shuffle-BN permutation must be undone exactly: local rows come back in local order.
    local = torch.arange(6.0).view(3, 2) + 100 * rank
    shuffled, undo = distributed.shuffle_batch(local)
    restored = distributed.unshuffle_batch(shuffled, undo)

    torch.manual_seed(0)
    model = MoCo(cfg)
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for x_q, x_k in global_batches(steps, cfg.optim.batch_size):
        # rank r holds the samples r, r + 2, ... (the sub-batches of split BN with 2 splits)
        out = ddp([x_q[rank::WORLD], x_k[rank::WORLD]])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    torch.save(
        {
            "restored": restored,
            "local": local,
            "shuffled": shuffled,
            "losses": losses,
            "queue": model.queue.clone(),
            "ptr": model.queue_ptr.clone(),
            "params": [p.detach().clone() for p in model.encoder_q.parameters()],
        },
        out_file,
    )


COMMON = ["moco.queue_size=20", "optim.batch_size=8"]
STEPS = 3


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One pair of processes runs every configuration below (starting processes is the slow part)."""
    from helpers import TINY

    from contrastlab.config import load_config

    out = tmp_path_factory.mktemp("ddp")
    configs = {
        "shuffle": load_config(
            "moco_v2_cifar", [*TINY, *COMMON, "model.bn_splits=1", "model.shuffle_bn=true"]
        ),
        "plain": load_config(
            "moco_v2_cifar", [*TINY, *COMMON, "model.bn_splits=1", "model.shuffle_bn=false"]
        ),
    }
    mp.spawn(_worker, args=(free_port(), configs, STEPS, str(out)), nprocs=WORLD, join=True)
    runs = {
        name: [torch.load(out / f"{name}-rank{r}.pt", weights_only=True) for r in range(WORLD)]
        for name in configs
    }
    runs["said"] = [json.loads((out / f"said-rank{r}.json").read_text()) for r in range(WORLD)]
    return runs


def test_a_warning_is_said_once_and_one_of_a_process_names_its_rank(ddp_runs):
    """Every process printed every warning: a user of 8 GPUs read each one 8 times, and could
    not tell which process had met a condition of its own."""
    said = ddp_runs["said"]
    assert said[0]["stderr"].splitlines() == [
        "warning: the same for every process",
        "warning: rank 0: this process's own",
        "warning: rank 1: met by rank 1 alone",
        "warning: met by every process",
    ]
    assert said[1]["stderr"].splitlines() == ["warning: rank 1: this process's own"]
    # an error met by rank 1 alone is raised on both, said by rank 0 alone, naming rank 1
    message = "rank 1: an image of this process's share is unreadable"
    assert said[0]["raised"] == {"message": message, "every_process": True}
    assert said[1]["raised"]["every_process"] is True  # left to rank 0


@pytest.mark.parametrize("name", ["shuffle", "plain"])
def test_ddp_queues_identical_and_shuffle_undone(ddp_runs, name):
    ranks = ddp_runs[name]
    for r in ranks:
        torch.testing.assert_close(r["restored"], r["local"])
    # the shuffled rows are a permutation of the global batch, split across the processes
    all_rows = torch.cat([r["shuffled"] for r in ranks])[:, 0].sort().values
    torch.testing.assert_close(all_rows, torch.cat([r["local"] for r in ranks])[:, 0].sort().values)
    torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"], rtol=0, atol=0)
    assert int(ranks[0]["ptr"]) == int(ranks[1]["ptr"]) == (STEPS * 8) % 20
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b)


def test_ddp_loss_equals_single_process_on_global_batch(ddp_runs, tiny_config):
    """Without key shuffling, DDP with per-process BN is split BN with one split per process."""
    ranks = ddp_runs["plain"]
    single_cfg = tiny_config("model.bn_splits=2", "model.shuffle_bn=false", *COMMON)
    torch.manual_seed(0)
    model = MoCo(single_cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step, (x_q, x_k) in enumerate(global_batches(STEPS, 8)):
        out = model([x_q, x_k])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ddp_loss = sum(r["losses"][step] for r in ranks) / WORLD
        assert out.loss.item() == pytest.approx(ddp_loss, rel=1e-5, abs=1e-6)
    for a, b in zip(model.encoder_q.parameters(), ranks[0]["params"]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-5)
    # the last step's keys entered the same slots (in rank order under DDP, batch order here)
    slots = [(16 + i) % 20 for i in range(8)]
    torch.testing.assert_close(
        model.queue[slots].sort(dim=0).values,
        ranks[0]["queue"][slots].sort(dim=0).values,
        rtol=1e-4,
        atol=1e-5,
    )


def test_torchrun_trains_with_two_processes(tmp_path):
    """The documented command: torchrun -m contrastlab train, gloo on the CPU."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from helpers import TINY

    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else shutil.which("torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "contrastlab",
        "train",
        "--config",
        "moco_v2_cifar",
        *TINY,
        "model.bn_splits=1",
        "optim.epochs=2",
        "optim.epochs=1",  # given twice: a warning, said once for both processes
        f"out_dir={tmp_path}",
        "name=ddp",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("run directory:") == 1  # only the main process reports
    # the start line names the processes and what each step takes
    assert "on cpu, 2 processes × batch 8 = 16 per step;" in proc.stdout, proc.stdout
    assert proc.stderr.count("warning: optim.epochs is given twice") == 1, proc.stderr[-2000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 96 // 16  # the global batch of 16 is split over the two processes


@pytest.mark.parametrize(
    "settings,said",
    [
        # found in the config, before the processes join
        (["optim.batch_size=127"], "must be divisible by model.bn_splits (4)"),
        # found in the checks before training, after they joined
        (["optim.batch_size=127", "model.bn_splits=1"], "by the number of processes (2)"),
    ],
)
def test_an_input_error_under_torchrun_is_printed_once(tmp_path, settings, said):
    """Every process meets it alike: rank 0 prints it, the other one exits silently with the
    same status (it was printed once per process)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun) if torchrun.exists() else shutil.which("torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "contrastlab",
        "train",
        "--config",
        "demo",
        *settings,
        f"out_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and said in errors[0], proc.stderr[-3000:]
    assert "exitcode  : 2 " in proc.stderr  # the root cause torchrun names: status 2
    assert not (tmp_path / "demo").exists()


def test_a_run_folder_another_process_removed_meanwhile_is_no_error(tmp_path, monkeypatch):
    """Under torchrun, rank 0 removed the run folder it created (a check failed on every process)
    between rank 1's look at it and its listing: rank 1 printed "cannot use ...: No such file or
    directory" besides the check's error."""
    from pathlib import Path

    from contrastlab.train import Trainer

    folder = tmp_path / "run"
    folder.mkdir()
    trainer = Trainer.__new__(Trainer)
    trainer._created_folders = [folder]

    def removed_meanwhile(self):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "iterdir", removed_meanwhile)
    trainer._remove_created_folders()
