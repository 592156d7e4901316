"""codec.checkpoint: one file, no pickle, the optimizer's state round trip, refused for another setup."""
import json
import struct

import pytest
import torch
import torch.nn as nn

from codec.checkpoint import KEY, Checkpoint
from codec.errors import UserError


def trained(opt_cls, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = opt_cls(model.parameters(), **kw)
    for _ in range(3):
        loss = model(torch.randn(5, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99)}),
                                         (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                         (torch.optim.SGD, {"lr": 0.1})])      # momentum_buffer None: a JSON scalar
def test_round_trip_restores_model_and_optimizer(tmp_path, opt_cls, kw):
    model, opt = trained(opt_cls, **kw)
    ckpt = Checkpoint(str(tmp_path / "run"), {"arch": "mlp", "sizes": (3, 4, 2)}, every=0)
    ckpt.save(model, opt, {"step": 3, "history": [{"psnr": float("inf")}]})
    assert ckpt.path == str(tmp_path / "run.safetensors") and sorted(p.name for p in tmp_path.iterdir()) == [
        "run.safetensors"]                                    # one file, written atomically (no temporaries left)

    saved = Checkpoint(str(tmp_path / "run"), {"arch": "mlp", "sizes": [3, 4, 2]}, every=0).load()
    assert saved.meta == {"step": 3, "history": [{"psnr": float("inf")}]}
    fresh, fresh_opt = trained(opt_cls, **{**kw, "lr": 1.0})
    fresh.load_state_dict(saved.model)
    fresh_opt.load_state_dict(saved.optimizer)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k])
    assert fresh_opt.param_groups[0]["lr"] == kw["lr"]
    assert fresh_opt.param_groups[0].get("betas") == opt.param_groups[0].get("betas")
    # one more step from either side lands on the same weights: the optimizer's state came back too
    x = torch.randn(5, 3)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_missing_other_setup_and_damaged(tmp_path):
    prefix = str(tmp_path / "c")
    assert Checkpoint(prefix, {"a": 1}, every=0).load() is None
    model, opt = trained(torch.optim.Adam)
    ckpt = Checkpoint(prefix, {"a": 1}, every=0, what="student setup")
    ckpt.save(model, None, {})
    assert ckpt.load().optimizer is None
    with pytest.raises(UserError, match="another student setup; delete it or drop --resume"):
        Checkpoint(prefix, {"a": 2}, every=0, what="student setup").load()
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged"):
        ckpt.load()
    ckpt.remove()
    assert not (tmp_path / "c.safetensors").exists()
    ckpt.remove()                                             # nothing there: no error


def test_no_pickle_inside(tmp_path):
    """The header is JSON, the tensors plain: a reader needs neither torch.load nor pickle."""
    model, opt = trained(torch.optim.Adam)
    Checkpoint(str(tmp_path / "c"), {"a": 1}, every=0).save(model, opt, {"step": 1})
    data = (tmp_path / "c.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    description = json.loads(header["__metadata__"][KEY])
    assert description["fingerprint"] == {"a": 1} and description["meta"] == {"step": 1}
    assert {k.split(".")[0] for k in header if k != "__metadata__"} == {"model", "optim"}


def test_due_follows_the_interval(tmp_path):
    model, _ = trained(torch.optim.Adam)
    assert Checkpoint(str(tmp_path / "c"), {}, every=0).due()
    ckpt = Checkpoint(str(tmp_path / "c"), {}, every=1e9)
    assert not ckpt.due()
    ckpt.every = 0
    assert ckpt.due()
