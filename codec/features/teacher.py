"""The teacher: the CIFAR ResNet of He et al. 2016 (option-A shortcuts), sized by a small config dict.

One class serves the pretrained CIFAR-10 ResNet-20/56 (3 stages of 16/32/64 channels) and the tiny ResNet the
default 8x8-digits data trains in seconds. Inputs are images in [0, 1]; the per-channel normalisation is part of
the model (a fixed buffer from the config), so every caller feeds the same thing.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from codec.errors import UserError

STAGES = ("layer1", "layer2", "layer3")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Named architectures; a config may also spell out the fields itself.
PRESETS: dict[str, dict[str, Any]] = {
    "resnet20": {"blocks": 3, "widths": [16, 32, 64], "in_channels": 3, "image_size": 32,
                 "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    "resnet56": {"blocks": 9, "widths": [16, 32, 64], "in_channels": 3, "image_size": 32,
                 "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    # 8x8 grey digits: one block per stage is plenty and trains in seconds on a CPU
    "digits": {"blocks": 1, "widths": [16, 32, 64], "in_channels": 1, "image_size": 8,
               "mean": [0.3], "std": [0.4]},
}


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the parameter-free option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # option A: subsample and zero-pad the channels when the shape changes (no parameters)
        self.pad = planes - in_planes if (stride != 1 or in_planes != planes) else None
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv1-bn1-ReLU, three stages of basic blocks (stride 1, 2, 2), global average pool, linear."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        blocks, widths = int(config["blocks"]), list(config["widths"])
        c_in = int(config["in_channels"])
        self.register_buffer("mean", torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.conv1 = nn.Conv2d(c_in, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        planes_in = widths[0]
        for i, planes in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(planes_in, planes, stride=2 if (i > 0 and b == 0) else 1))
                planes_in = planes
            setattr(self, STAGES[i], nn.Sequential(*layers))
        self.linear = nn.Linear(widths[-1], int(config["num_classes"]))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(self.normalize(x))))

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(feat, 1).flatten(1))

    def features(self, x: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        """Every stage's output and the logits (the distillation targets); `upto` stops after that stage."""
        out = {}
        h = self.stem(x)
        for name in STAGES:
            h = getattr(self, name)(h)
            out[name] = h
            if name == upto:
                return out
        out["logits"] = self.head(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


def stage_stride(split: str) -> int:
    """How much smaller than the image a stage's output is (layer1: 1, layer2: 2, layer3: 4)."""
    return 2 ** STAGES.index(split)


def make_config(preset: str, num_classes: int, classes: list[str] | None = None, **overrides) -> dict[str, Any]:
    if preset not in PRESETS:
        raise UserError(f"unknown teacher architecture {preset!r} (known: {', '.join(PRESETS)})")
    cfg = dict(PRESETS[preset], arch=preset, num_classes=int(num_classes))
    cfg["classes"] = list(classes) if classes else [str(i) for i in range(num_classes)]
    cfg.update(overrides)
    return cfg


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of convolutions and linear layers for one forward pass of `x` (batch 1)."""
    total = 0

    def conv_hook(m, inp, out):
        nonlocal total
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]   # (in/groups) * kh * kw
        if isinstance(m, nn.ConvTranspose2d):
            total += inp[0].numel() * m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        else:
            total += out.numel() * k

    def linear_hook(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    def gdn_hook(m, inp, out):   # GDN mixes the channels at every pixel: a 1x1 convolution C -> C
        nonlocal total
        total += out.numel() * out.shape[1]

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif type(m).__name__ == "GDN":
            hooks.append(m.register_forward_hook(gdn_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def load_pretrained_resnet(path: str, classes: list[str] | None = None) -> CifarResNet:
    """A pretrained CIFAR ResNet saved as {'state_dict': ...} (keys prefixed `module.`), read without pickle code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"teacher weights {path} not found") from None
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise UserError(f"{path} is not a teacher model file ({type(e).__name__})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("layer1."))
        widths = [int(state[f"{s}.0.conv1.weight"].shape[0]) for s in STAGES]
        c_in = int(state["conv1.weight"].shape[1])
        n_cls = int(state["linear.weight"].shape[0])
    except (KeyError, ValueError, IndexError):
        raise UserError(f"{path} is not a CIFAR ResNet state dict (conv1, layer1..3, linear)") from None
    cfg = {"arch": f"resnet{6 * blocks + 2}", "blocks": blocks, "widths": widths, "in_channels": c_in,
           "num_classes": n_cls, "image_size": 32,
           "mean": list(IMAGENET_MEAN) if c_in == 3 else [0.5], "std": list(IMAGENET_STD) if c_in == 3 else [0.5],
           "classes": list(classes) if classes else (CIFAR10_CLASSES if n_cls == 10 and c_in == 3
                                                     else [str(i) for i in range(n_cls)])}
    from codec.features.model_file import teacher_cost

    # the block count comes from the keys' names: bounded, and held to the values stored, before anything is built
    teacher_cost(cfg, sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor)), path)
    model = CifarResNet(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # the published weights predate BatchNorm's num_batches_tracked counter; anything else missing is an error
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not match a {cfg['arch']} "
                        f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
    return model


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
