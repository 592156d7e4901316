"""Resumable training state, one file for every training loop (the INR fit and the student/teacher runs).

`<prefix>.safetensors` holds the model's tensors and the optimizer's, and in its header a JSON description: the
fingerprint of the setup that wrote it, the optimizer's hyper-parameters and scalars, and the caller's meta. Nothing
is pickled, and one atomic write replaces the whole state, so a crash leaves the previous checkpoint or the new one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bitstream.atomic import write_atomic
from codec.errors import UserError

KEY = "ncodec-checkpoint"     # the header metadata entry that holds the JSON description


@dataclass
class Saved:
    """A loaded checkpoint: a model state_dict, an optimizer state_dict (or None), the caller's meta."""
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    meta: dict[str, Any]


class Checkpoint:
    """The checkpoint at `<prefix>.safetensors` of a run whose setup is `fingerprint` (anything JSON can hold).

    `every`: seconds between the saves that `due()` asks for (0: every time); `what` names the setup in the error
    for a checkpoint written by another one."""

    def __init__(self, prefix: str, fingerprint: Any, *, every: float, what: str = "setup"):
        self.path = os.fspath(prefix) + ".safetensors"
        self.fingerprint = json.loads(json.dumps(fingerprint))   # as it reads back: tuples become lists
        self.every = every
        self.what = what
        self.last = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every

    def save(self, model: nn.Module | dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None,
             meta: dict[str, Any]) -> None:
        from safetensors.torch import save

        state = model.state_dict() if isinstance(model, nn.Module) else model
        # independent CPU copies: safetensors refuses tensors that share storage
        tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()}
        description: dict[str, Any] = {"fingerprint": self.fingerprint, "meta": meta}
        if optimizer is not None:
            opt_tensors, description["optimizer"] = _flatten_optimizer(optimizer.state_dict())
            tensors.update(opt_tensors)
        write_atomic(self.path, save(tensors, metadata={KEY: json.dumps(description)}))
        self.last = time.perf_counter()

    def load(self) -> Saved | None:
        """The saved state, or None if there is none; a damaged checkpoint or one of another setup is a UserError."""
        from safetensors import SafetensorError, safe_open

        if not os.path.exists(self.path):
            return None
        try:
            with safe_open(self.path, framework="pt") as f:
                description = json.loads((f.metadata() or {})[KEY])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            raise UserError(f"--resume: checkpoint {self.path} is damaged ({e}); delete it or drop --resume") \
                from None
        if description.get("fingerprint") != self.fingerprint:
            raise UserError(f"--resume: checkpoint {self.path} was made for another {self.what}; "
                            "delete it or drop --resume")
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        rest = description.get("optimizer")
        optimizer = _unflatten_optimizer(tensors, rest) if rest is not None else None
        return Saved(model, optimizer, description.get("meta") or {})

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors "optim.<param>.<name>", JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for k, v in per_param.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:                        # e.g. SGD's momentum_buffer None before its first step
                scalars.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for idx, kv in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(kv)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}
