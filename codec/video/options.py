"""The video codecs' options (nerv, hnerv, nervpp, nirvana, pfnr): encode and decode.

No torch here: the CLI reads these classes to build `--help`.
"""
from __future__ import annotations

from dataclasses import dataclass

from codec.errors import UserError
from codec.options import EncodeOptions, Options, in_range, not_both, one_of, option, positive


@dataclass
class VideoOptions(EncodeOptions):
    """What every video codec reads from its input."""

    max_frames: int | None = option(None, "Use only the first N frames.", metavar="N")
    crop: str | None = option(None, "Centre crop to height x width (the papers' order, not FFmpeg's WxH), e.g. 720x1280 for a 1280x720 video.", metavar="HxW")

    def check(self) -> None:
        super().check()
        positive("--max-frames", self.max_frames)
        if self.crop is not None:
            from codec.video.io import parse_crop

            parse_crop(self.crop)


@dataclass
class FitOptions(VideoOptions):
    """A fitted network: how long to fit and how large it is."""

    max_time: float | None = option(None, "Fitting budget in seconds; the file is finished after it.", metavar="S")
    size: str | None = option(None, "Model size in parameters: 0.35M, 1.5M, 350k or any number.", metavar="N")

    def check(self) -> None:
        super().check()
        positive("--max-time", self.max_time)
        self.parameter_count()

    def parameter_count(self) -> float | None:
        """--size as a number of parameters (None when not given)."""
        from codec.video.layers import parse_size

        return parse_size(self.size)


@dataclass
class INROptions(FitOptions):
    """NeRV and its descendants: one network for the whole clip."""

    epochs: int | None = option(None, "Training epochs (default 300 when --max-time is not given).")
    bpp: float | None = option(None, "Target bits per pixel: the largest model whose file lands at or under it.")
    resume: bool = option(False, "Continue from the checkpoint beside the output.")
    batch_size: int | None = option(None, "Frames per fitting step (default: the recipe's; NeRV 1).")
    lr: float | None = option(None, "Peak learning rate (default: the recipe's; NeRV 5e-4).")
    weight_bits: int = option(8, "Bits per weight.")
    prune: float = option(0.0, "Share of stem/block weights to prune by magnitude, e.g. 0.2.")
    qat_epochs: int = option(0, "Epochs of quantisation-aware fine-tuning after the fit.")

    def check(self) -> None:
        super().check()
        positive("--epochs", self.epochs)
        positive("--bpp", self.bpp)
        positive("--batch-size", self.batch_size)
        positive("--lr", self.lr)
        in_range("--weight-bits", self.weight_bits, 2, 16)
        in_range("--prune", self.prune, 0.0, 1.0, hi_open=True)
        in_range("--qat-epochs", self.qat_epochs, 0, 1 << 20)
        not_both(("--size", self.size), ("--bpp", self.bpp))


@dataclass
class NeRVOptions(INROptions):
    pass


HNERV_RECIPES = ("ncodec", "hnerv-paper")     # codec/video/inr_codec.py HNeRVFamily.recipes (docs/INR.md)


@dataclass
class HNeRVOptions(INROptions):
    embed_bits: int = option(6, "Bits per embedding value.")
    recipe: str = option("ncodec", "How the network is fitted: ncodec (lr 5e-3, 1 frame per step, learned grids) or "
                                   "hnerv-paper (the paper's: lr 1e-3, 2 frames per step). One decoder reads both.",
                         metavar="NAME")

    def check(self) -> None:
        super().check()
        in_range("--embed-bits", self.embed_bits, 2, 16)
        one_of("--recipe", self.recipe, HNERV_RECIPES)


@dataclass
class NeRVPPOptions(INROptions):
    """NeRV++ also takes the paper's size names for --size: XS, S, M, L."""

    def parameter_count(self) -> float | None:
        from codec.video.layers import parse_size
        from codec.video.nervpp import parse_alias

        return parse_size(parse_alias(self.size))


@dataclass
class NirvanaOptions(FitOptions):
    size: str | None = option(None, "Parameters per group network, e.g. 20k (default: 0.1 per pixel of a group, "
                                    "10k..400k).", metavar="N")
    steps_per_group: int | None = option(
        None, "Fitting steps per group (the first group gets 4x; default 150 when --max-time is not given).")
    bpp: float | None = option(None, "Target bits per pixel: lambda is steered group by group towards it.")
    lmbda: float | None = option(None, "Rate weight: loss = MSE + lambda * bpp (default 0.01; higher = smaller file).",
                                 flag="--lambda")
    group: int = option(8, "Frames per group network.")
    patch: int | None = option(None, "Patch side: 8, 16, 32 or 64 (default 16 below 288 lines, else 32).")
    key_every: int = option(0, "Every Nth group is coded without reference (0: only the first).")
    latent_lr: float | None = option(None, "Adam step of the integer latents, in quantisation steps (default 3).")

    def check(self) -> None:
        super().check()
        positive("--steps-per-group", self.steps_per_group)
        positive("--bpp", self.bpp)
        positive("--latent-lr", self.latent_lr)
        in_range("--group", self.group, 1, 64)
        in_range("--key-every", self.key_every, 0, 1 << 20)
        one_of("--patch", self.patch, (8, 16, 32, 64))
        not_both(("--lambda", self.lmbda), ("--bpp", self.bpp))
        if self.lmbda is not None and not 0 <= self.lmbda < float("inf"):
            raise UserError(f"--lambda must be >= 0, got {self.lmbda}")


@dataclass
class PFNROptions(FitOptions):
    size: str | None = option(None, "Supernet parameters, e.g. 120k, the videos' heads not counted (default: the size "
                                    "whose first video stores about 0.1 bpp of weights).", metavar="N")
    epochs: int | None = option(None, "Training epochs per video (default 150 when --max-time is not given).")
    density: float = option(0.3, "Share of each supernet tensor one video uses, in (0, 1].")
    weight_bits: int = option(8, "Bits per weight.")
    lr: float | None = option(None, "Peak learning rate (default 5e-4).")
    batch_size: int = option(1, "Frames per fitting step.")

    def check(self) -> None:
        super().check()
        positive("--epochs", self.epochs)
        positive("--lr", self.lr)
        positive("--batch-size", self.batch_size)
        in_range("--weight-bits", self.weight_bits, 2, 16)
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"--density must be in (0, 1], got {self.density}")


# ---------------------------------------------------------------------------------------------------------------
# decoding


@dataclass
class VideoDecodeOptions(Options):
    frames: str | None = option(None, "Decode only frames A:B (from 0, B excluded); A alone is one frame.",
                                metavar="A:B")
    batch_size: int | None = option(None, "Frames per decoder call.")

    def check(self) -> None:
        super().check()
        positive("--batch-size", self.batch_size)


@dataclass
class PFNRDecodeOptions(VideoDecodeOptions):
    video: int | None = option(None, "Which video of the library, from 1 (required when it holds several).")
