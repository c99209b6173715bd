import pytest
import torch
from torch import nn

from foresight.nn import ema_update, make_target


def test_make_target_is_a_frozen_copy():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for t, o in zip(target.parameters(), online.parameters()):
        assert torch.equal(t, o) and t.data_ptr() != o.data_ptr()


def test_ema_update_values_and_buffers():
    online = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    target = make_target(online)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(1.0)
        for p in online.parameters():
            p.fill_(3.0)
    online.train()(torch.randn(8, 2))  # moves BatchNorm running stats
    ema_update(target, online, decay=0.75)
    for p in target.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1.5))  # 0.75 * 1 + 0.25 * 3
    torch.testing.assert_close(target[1].running_mean, online[1].running_mean)
    ema_update(target, online, decay=0.0)
    for t, o in zip(target.parameters(), online.parameters()):
        assert torch.equal(t, o)


def test_ema_update_rejects_bad_input():
    with pytest.raises(ValueError, match="decay must be in \\[0, 1\\], got 1.5"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)
    with pytest.raises(ValueError, match="target/online parameter shapes differ: \\(2, 2\\) vs \\(3, 2\\)"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 3), 0.5)
    with pytest.raises(ValueError, match="target has 2 parameter tensors but online has 1"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), 0.5)
