"""NeRV / HNeRV models: sizing rule, strides from the frame size, shapes, config validation."""
import pytest
import torch

from bitstream.errors import BitstreamError
from codec.errors import UserError
from codec.video.hnerv import HNeRV, HNeRVConfig, HNeRVDecoder, hnerv_config
from codec.video.layers import PositionalEncoding, choose_geometry, meta_count, parse_size
from codec.video import nerv
from codec.video.nerv import NeRV, nerv_config


def hnerv_count(cfg):
    return meta_count(lambda: HNeRVDecoder(cfg)) + cfg.embed_values


@pytest.mark.parametrize("size", ["0.35M", "0.75M", "1.5M", "3M"])
def test_hnerv_bunny_sizes_within_5_percent(size):
    target = parse_size(size)
    cfg = hnerv_config(640, 1280, 132, target)
    assert abs(hnerv_count(cfg) - target) <= 0.05 * target
    assert cfg.strides == (5, 4, 4, 2, 2) and (cfg.grid_h, cfg.grid_w) == (2, 4)   # the paper's 16x2x4 embedding


def test_hnerv_1_5m_matches_the_paper_config():
    cfg = hnerv_config(640, 1280, 132, 1.5e6)
    assert cfg.fc_dim == 68 and cfg.widths() == [57, 48, 40, 33, 28] and cfg.kernels == (1, 3, 5, 5, 5)
    assert hnerv_count(cfg) == 1_505_172


@pytest.mark.parametrize("size", ["0.35M", "0.75M", "1.5M", "3M", "123456"])
def test_nerv_sizes_within_5_percent(size):
    target = parse_size(size)
    for h, w, t in ((640, 1280, 132), (144, 176, 120)):
        cfg = nerv_config(h, w, t, target)
        assert abs(meta_count(lambda: NeRV(cfg)) - target) <= 0.05 * target


@pytest.mark.parametrize("h, w, t, size", [
    (160, 320, 32, 0.1e6),       # the reduced Bunny: the old rule gave fc_dim 2 behind a 595-wide stem
    (144, 176, 120, 0.1e6),      # carphone: fc_dim 4 behind 512
    (144, 176, 120, 65.5e3),     # --bpp 0.2 on carphone: fc_dim 1
    (640, 1280, 132, 0.35e6),
    (640, 1280, 132, 1.5e6),
])
def test_nerv_has_no_bottleneck_narrower_than_its_blocks(h, w, t, size):
    cfg = nerv_config(h, w, t, size)
    model = NeRV(cfg)
    widths = cfg.widths()
    assert cfg.fc_dim >= max(widths) and widths == sorted(widths, reverse=True)   # nothing widens after the stem
    assert [b.conv.in_channels for b in model.blocks] == [cfg.fc_dim] + widths[:-1]
    stem = sum(p.numel() for p in model.stem.parameters())
    assert stem <= nerv.STEM_SHARE * size and cfg.stem_hidden <= nerv.PAPER_HIDDEN   # the blocks get the budget
    assert abs(meta_count(lambda: NeRV(cfg)) - size) <= 0.05 * size


def test_nerv_below_twelve_wide_blocks_keeps_them_equal():
    cfg = nerv_config(144, 176, 30, 30.6e3)      # too small for 12-wide blocks: every block fc_dim wide
    assert cfg.lower_width == cfg.fc_dim and set(cfg.widths()) == {cfg.fc_dim}
    assert cfg.stem_hidden >= nerv.MIN_HIDDEN
    assert abs(meta_count(lambda: NeRV(cfg)) - 30.6e3) <= 0.05 * 30.6e3


def test_carphone_geometry_pads_and_crops():
    geo = choose_geometry(144, 176)
    assert geo.padded[0] >= 144 and geo.padded[1] >= 176
    assert geo.padded[0] * geo.padded[1] <= 1.10 * 144 * 176
    assert geo.grid_h * geo.grid_w <= 16                     # small embedding: a sane share of the budget
    cfg = hnerv_config(144, 176, 120, 0.35e6)
    assert cfg.embed_values < 0.1 * 0.35e6


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "0M", "nan"])
def test_bad_sizes_are_user_errors(bad):
    with pytest.raises(UserError):
        parse_size(bad)


def test_too_small_size_is_a_user_error():
    with pytest.raises(UserError, match="embedding"):
        hnerv_config(144, 176, 120, 20_000)
    with pytest.raises(UserError, match="5%"):
        hnerv_config(144, 176, 120, 40_000)


def test_forward_shapes_on_an_awkward_frame_size():
    torch.manual_seed(0)
    h, w = 36, 52                                            # no stride product divides both: pad, then crop
    hn = HNeRV(hnerv_config(h, w, 4, 60_000))
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = hn(torch.tensor([0, 1]), x)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    nv = NeRV(nerv_config(h, w, 4, 80_000))
    assert nv(torch.tensor([0, 3])).shape == (2, 3, h, w)


def test_positional_encoding_is_nerv_s():
    pe = PositionalEncoding(1.25, 40)
    v = pe(torch.tensor([0.5]))
    assert v.shape == (1, 80)
    assert torch.allclose(v[0, 0], torch.sin(torch.tensor(0.5 * torch.pi)))


def test_config_round_trip_and_validation():
    cfg = hnerv_config(144, 176, 120, 0.35e6)
    assert HNeRVConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BitstreamError):
        HNeRVConfig.from_dict({**cfg.to_dict(), "fc_dim": -3})
    with pytest.raises(BitstreamError):
        HNeRVConfig.from_dict({**cfg.to_dict(), "strides": "xyz"})
    with pytest.raises(BitstreamError):
        HNeRVConfig.from_dict({"height": 10})
