"""Multi-process behaviour on the CPU: gloo process groups in spawned workers, and DDP through the CLI."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import cnnkit
from cnnkit.config.load import load_config
from cnnkit.data.sampler import UnpaddedDistributedSampler
from cnnkit.training.distributed import AllReduceBatchNorm, average_bn_buffers, convert_sync_bn
from cnnkit.training.optim import scaled_lr

from .conftest import QUICKSTART, REPO, SMOKE, cli, run_cli

WORLD = 2


def _init(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_bn_worker(rank: int, port: int, out: str) -> None:
    _init(rank, port)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    grad = torch.randn(8, 3, 4, 4)
    shard = slice(rank * 4, rank * 4 + 4)
    layer = convert_sync_bn(nn.Sequential(nn.BatchNorm2d(3)), "cpu")[0]
    assert isinstance(layer, AllReduceBatchNorm)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    xs = x[shard].clone().requires_grad_()
    y = layer(xs)
    (y * grad[shard]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "x_grad": xs.grad,
            "w_grad": layer.weight.grad,
            "b_grad": layer.bias.grad,
            "mean": layer.running_mean,
            "var": layer.running_var,
        },
        f"{out}/{rank}.pt",
    )
    dist.destroy_process_group()


def test_sync_bn_equals_plain_bn_over_the_global_batch(tmp_path):
    mp.spawn(_sync_bn_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 4, 4) * 2 + 1).requires_grad_()
    grad = torch.randn(8, 3, 4, 4)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = reference(x)
    (y * grad).sum().backward()
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, atol=1e-5, rtol=1e-5)
    # DDP sums the ranks' parameter gradients (then divides by the world size, as it does for any layer)
    torch.testing.assert_close(sum(r["w_grad"] for r in ranks), reference.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sum(r["b_grad"] for r in ranks), reference.bias.grad, atol=1e-5, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["mean"], reference.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r["var"], reference.running_var, atol=1e-5, rtol=1e-5)


def _average_worker(rank: int, port: int, out: str) -> None:
    _init(rank, port)
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    model[1].running_mean.fill_(float(rank + 1))  # rank 0: 1, rank 1: 2
    model[1].running_var.fill_(float(4 * (rank + 1)))
    assert average_bn_buffers(model) == 1
    torch.save({"mean": model[1].running_mean, "var": model[1].running_var}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_bn_buffers_are_averaged_over_ranks(tmp_path):
    mp.spawn(_average_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert torch.allclose(result["mean"], torch.full((3,), 1.5))
        assert torch.allclose(result["var"], torch.full((3,), 6.0))


def test_unpadded_sampler_covers_every_sample_once():
    data = list(range(11))
    shards = [list(UnpaddedDistributedSampler(data, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == data and [len(s) for s in shards] == [4, 4, 3]


def test_lr_scaling_rules():
    assert scaled_lr(0.1, "none", 1024, 256) == 0.1
    assert scaled_lr(0.1, "linear", 1024, 256) == pytest.approx(0.4)
    assert scaled_lr(0.1, "sqrt", 1024, 256) == pytest.approx(0.2)


def test_resume_continues_the_same_wandb_run(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(
        [QUICKSTART, SMOKE], ["logger.wandb.mode=auto", "trainer.max_epochs=1", "optim.scheduler=constant"]
    )
    first = cnnkit.fit(cfg)
    run_id = (first.run_dir / "wandb_id").read_text().strip()
    (resumed,) = cnnkit.fit_recipe(
        [QUICKSTART, SMOKE], ["logger.wandb.mode=auto", "trainer.max_epochs=2", "optim.scheduler=constant"], ckpt="last"
    )
    assert resumed.run_dir == first.run_dir
    offline = sorted(p.name for p in (resumed.run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(f"-{run_id}" in name for name in offline)  # wandb adds "-1" within a second
    assert torch.load(resumed.last_checkpoint, weights_only=True)["cnnkit"]["wandb_run_id"] == run_id


def test_sweep_yaml_from_a_recipe_matrix():
    import yaml

    proc = cli("sweep", str(REPO / "recipes" / "bn_placement.cpu.yaml"))
    sweep = yaml.safe_load(proc.stdout)
    assert sweep["method"] == "grid" and sweep["parameters"]["model.norm"]["values"] == ["none", "bn_pre", "bn_post"]
    assert sweep["command"][-1] == "${args_no_hyphens}"


def test_an_override_of_a_matrix_key_narrows_the_matrix(tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text("name: narrow\nmatrix:\n  model.norm: [none, bn_pre]\n  optim.lr: [0.01, 0.1]\n")
    results = cnnkit.fit_recipe([QUICKSTART, SMOKE, str(recipe)], ["model.norm=bn_pre", "optim.lr=0.1"])
    assert [r.run_dir.name for r in results] == ["norm=bn_pre+lr=0.1"]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])  # 2: each variant's two ranks in a fresh process of its worker
def test_two_process_ddp_fit_through_the_cli(tmp_path, jobs):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text("name: ddp\nmatrix:\n  distributed.sync_bn: [false, true]\n")
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        SMOKE,
        "--config",
        str(REPO / "configs" / "trainer" / "ddp_cpu.yaml"),
        "--config",
        str(recipe),
        "logger.wandb.mode=offline",
        "--jobs",
        jobs,
        cwd=tmp_path,
        timeout=400,
        env_extra={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("sync_bn=false", "sync_bn=true"):
        run = tmp_path / "runs" / "ddp_cpu" / "ddp" / variant  # the ddp_cpu preset's own runs_dir
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run per variant, not per rank
    lines = proc.stdout.splitlines()  # reported once, by rank 0
    assert sorted(line.split("  ")[:2] for line in lines if line.startswith("[")) == [
        ["[1/2] sync_bn=false", "finished"],
        ["[2/2] sync_bn=true", "finished"],
    ], proc.stdout
    assert sum(line.startswith("cnnkit: ddp: 2 runs in ") for line in lines) == 1, proc.stdout
