"""Reading checkpoints safely (``weights_only=True``) and finding the config they were trained with."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from cnnkit.errors import CheckpointError, first_line
from cnnkit.runs.run_dir import RunDir


def best_checkpoint(run: RunDir) -> Path:
    """The run's best checkpoint: the one its status.json records, else the newest best-*.ckpt."""
    recorded = run.read_status().get("best_checkpoint") if run.status_file.is_file() else None
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    found = sorted(run.checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(
            f"no best checkpoint in '{run.checkpoints}' (checkpoint.save_top_k=0, or the run has not "
            f"validated yet); use --ckpt last or a path"
        )
    return found[-1]


def resolve_checkpoint(arg: str, run: RunDir | None) -> Path:
    """``last`` means the run's checkpoints/last.ckpt, ``best`` its best one by checkpoint.monitor;
    anything else is a path."""
    if arg == "best":
        if run is None:
            raise CheckpointError("--ckpt best needs --config to find the run; or pass the checkpoint's path")
        return best_checkpoint(run)
    if arg == "last":
        if run is None:
            raise CheckpointError("--ckpt last needs --config to find the run; or pass the checkpoint's path")
        path = run.last_checkpoint
        if not path.is_file():
            raise CheckpointError(f"no checkpoint to resume: '{path}' does not exist; train first, or pass a path")
        return path
    path = Path(arg)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{arg}' not found")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{arg}' is not a file")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a cnnkit checkpoint on the CPU without running any code stored in it."""
    # startup: torch only when this runs
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise CheckpointError(f"checkpoint '{path}' cannot be read: permission denied") from err
    except pickle.UnpicklingError as err:
        reason = first_line(err)
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"checkpoint '{path}' holds pickled objects beyond tensors and plain data; cnnkit refuses to "
                f"load it (weights_only=True) because loading could run code"
            ) from err
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a PyTorch checkpoint: {reason}") from err
    except Exception as err:  # torch raises many types for a damaged file
        reason = first_line(err, type(err).__name__)
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated: {reason}") from err
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "config" not in hparams or "data_info" not in hparams:
        raise CheckpointError(f"checkpoint '{path}' is not a cnnkit checkpoint (it has no stored cnnkit config)")
    return checkpoint
