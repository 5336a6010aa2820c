"""``cnnkit describe``: a CNN's anatomy — shapes, parameters, receptive fields, parameter sharing.

Receptive field r and jump j (the effective stride, in input pixels) follow the standard
recurrences through each conv/pool layer with kernel k, stride s, padding p, dilation d:
    k' = d·(k − 1) + 1,   out = ⌊(in + 2p − k') / s⌋ + 1,   r ← r + (k' − 1)·j,   j ← j·s
Every predicted output size is checked against a forward pass on one zero input. Needs no data
and no Lightning: the input shape and class count come from the dataset entry's ``info``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from cnnkit.console import text_table

WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # their window is known exactly: the formula must hold
GLOBAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten)
UNKNOWN = "unknown"  # a layer changed the spatial size in a way its attributes do not tell


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    params: int
    kernel: Optional[int] = None
    stride: Optional[int] = None
    padding: Optional[int] = None
    receptive_field: Any = None  # None once every output sees the whole input; UNKNOWN after an unknown layer
    jump: Any = None
    macs: int = 0
    fc_equivalent_params: Optional[int] = None  # a dense layer with the same input → output maps


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _window(module: nn.Module) -> Optional[tuple[int, int, int, int]]:
    """(kernel, stride, padding, dilation) from a layer's attributes, as torch's windowed layers name
    them; a stride of None means the kernel size (``LPPool2d``). None when the attributes do not say
    (no ``kernel_size``, or no ``stride`` at all, as in ``FractionalMaxPool2d``)."""
    if not hasattr(module, "kernel_size") or not hasattr(module, "stride"):
        return None
    kernel = _first(module.kernel_size)
    stride = kernel if module.stride is None else _first(module.stride)
    dilation = _first(getattr(module, "dilation", 1))
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str):  # Conv2d's "same" / "valid"
        padding = dilation * (kernel - 1) // 2 if padding == "same" else 0
    return kernel, stride, _first(padding), dilation


def describe_model(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """One row per leaf module in forward order, and totals."""
    rows: list[LayerRow] = []
    state: dict[int, tuple[Optional[int], Optional[int]]] = {}  # id(tensor) → (receptive field, jump)
    keep_alive: list[torch.Tensor] = []  # so tensor ids are not reused during the pass
    last = {"value": (1, 1)}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if not isinstance(output, torch.Tensor):
            return
        r, j = state.get(id(x), last["value"]) if x is not None else last["value"]
        row = LayerRow(
            name=names[module],
            type=type(module).__name__,
            output_shape=list(output.shape[1:]),
            params=sum(p.numel() for p in module.parameters(recurse=False)),
        )
        row.receptive_field, row.jump = _follow(module, x, output, row, r, j)
        _count_macs(module, x, output, row)
        rows.append(row)
        state[id(output)] = (row.receptive_field, row.jump)
        keep_alive.append(output)
        last["value"] = (row.receptive_field, row.jump)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, *input_shape)
            state[id(x)] = (1, 1)
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {
        "input_shape": list(input_shape),
        "layers": [asdict(row) for row in rows],
        "totals": _totals(model, rows, list(logits.shape[1:])),
    }


def _follow(
    module: nn.Module, x: Optional[torch.Tensor], output: torch.Tensor, row: LayerRow, r: Any, j: Any
) -> tuple[Any, Any]:
    """The receptive field and jump after ``module`` (from ``r``, ``j`` before it); a window's
    kernel/stride/padding go into ``row`` when the output size follows their formula."""
    spatial = x is not None and x.dim() == 4 and output.dim() == 4
    window = _window(module) if spatial and not isinstance(module, GLOBAL) else None
    if window is not None:
        k, s, p, d = window
        effective = d * (k - 1) + 1
        predicted = [(size + 2 * p - effective) // s + 1 for size in x.shape[2:]]
        if predicted == list(output.shape[2:]):
            row.kernel, row.stride, row.padding = k, s, p
            return (r + (effective - 1) * j, j * s) if isinstance(r, int) else (r, j)
        if isinstance(module, WINDOWED) and not getattr(module, "ceil_mode", False):
            raise RuntimeError(f"describe: {row.name} gave {list(output.shape[2:])}, the formula {predicted}")
        return UNKNOWN, UNKNOWN  # e.g. ceil_mode, or an output size of its own: no formula to follow
    if isinstance(module, GLOBAL):
        return None, None
    if spatial and list(x.shape[2:]) != list(output.shape[2:]):
        return UNKNOWN, UNKNOWN
    return r, j


def _count_macs(module: nn.Module, x: Optional[torch.Tensor], output: torch.Tensor, row: LayerRow) -> None:
    """Multiply-accumulates, and for a conv the parameters a fully-connected layer of the same maps would need."""
    if isinstance(module, nn.Conv2d) and x is not None:
        row.macs = output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        row.fc_equivalent_params = x.numel() * output.numel() + (output.numel() if module.bias is not None else 0)
    elif isinstance(module, nn.Linear):
        row.macs = module.in_features * module.out_features


def _totals(model: nn.Module, rows: list[LayerRow], output_shape: list[int]) -> dict[str, Any]:
    convs = [row for row in rows if row.fc_equivalent_params is not None]
    conv_params = sum(row.params for row in convs)
    fc_params = sum(row.fc_equivalent_params for row in convs)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs": sum(row.macs for row in rows),
        "conv_params": conv_params,
        "conv_fc_equivalent_params": fc_params,
        "sharing_factor": fc_params / conv_params if conv_params else None,
        "output_shape": output_shape,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_text(report: dict[str, Any], title: str) -> str:
    header = ["layer", "type", "output", "params", "k/s/p", "RF", "jump", "MACs"]
    table = [header]
    for row in report["layers"]:
        ksp = "-" if row["kernel"] is None else f"{row['kernel']}/{row['stride']}/{row['padding']}"
        rf = "all" if row["receptive_field"] is None else _fmt(row["receptive_field"])
        table.append(
            [
                row["name"],
                row["type"],
                _fmt(row["output_shape"]),
                _fmt(row["params"]),
                ksp,
                rf,
                _fmt(row["jump"]),
                _fmt(row["macs"]),
            ]
        )
    lines = [title, "", *text_table(table, left=2)]
    t = report["totals"]
    lines += [
        "",
        f"total: {_fmt(t['params'])} parameters ({_fmt(t['trainable_params'])} trainable), "
        f"{_fmt(t['macs'])} multiply-accumulates per image, output {_fmt(t['output_shape'])}",
    ]
    if t["conv_params"]:
        lines.append(
            f"parameter sharing: the conv layers hold {_fmt(t['conv_params'])} parameters; fully-connected "
            f"layers mapping the same inputs to the same feature maps would need "
            f"{_fmt(t['conv_fc_equivalent_params'])} ({t['sharing_factor']:,.0f}x more)"
        )
    return "\n".join(lines) + "\n"
