"""Tests for stargal.cnn: the torch modules StarGalaxyCNN and HybridCNN (CPU)."""

import pytest
import torch

from stargal.cnn import HybridCNN, StarGalaxyCNN

torch.set_num_threads(1)


@pytest.mark.parametrize("size", [7, 9, 15, 21])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cnn_any_odd_size(size, depth):
    net = StarGalaxyCNN(width=4, depth=depth).eval()
    out = net(torch.randn(3, 5, size, size))
    assert out.shape == (3, 2)
    assert torch.isfinite(out).all()


def test_cnn_architecture_is_attribution_friendly():
    net = StarGalaxyCNN(width=4, depth=3)
    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 3 and len({id(m) for m in relus}) == 3
    assert not any(m.inplace for m in relus)
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 2
    assert net.classifier.in_features == 16 and net.feature_map_size(15) == 4


@pytest.mark.parametrize("kw", [dict(width=0), dict(depth=0), dict(dropout=1.0),
                                dict(input_size=14), dict(input_size=5), dict(n_classes=1)])
def test_cnn_bad_params(kw):
    with pytest.raises(ValueError):
        StarGalaxyCNN(**kw)


def test_cnn_bad_input_shape():
    with pytest.raises(ValueError, match="expected cutouts"):
        StarGalaxyCNN()(torch.zeros(2, 4, 15, 15))


def test_cnn_ensemble_members_average_in_probability():
    pair = StarGalaxyCNN(width=4, depth=2, members=3)
    assert len(pair.towers) == 3 and pair.n_features == 8
    X = torch.randn(6, 5, 9, 9)
    # each member has its own initial weights
    w = [t.features[0].weight for t in pair.towers]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])
    assert pair.train()(X).shape == (6, 3, 2)  # training: every member's logits
    pair.eval()
    members = torch.stack([torch.softmax(t(X), dim=-1) for t in pair.towers]).mean(dim=0)
    torch.testing.assert_close(torch.softmax(pair(X), dim=-1), members)
    with pytest.raises(ValueError, match="members"):
        StarGalaxyCNN(members=0)


def test_hybrid_cnn_joins_the_feature_branch():
    torch.manual_seed(0)
    net = HybridCNN(in_channels=10, width=4, depth=2, n_features=3).eval()
    images, features = torch.randn(4, 10, 9, 9), torch.randn(4, 3)
    assert net(images, features).shape == (4, 2)
    assert not torch.allclose(net(images, features), net(images))  # no features: zeros in the branch
    torch.testing.assert_close(net(images), net(images, torch.zeros(4, 3)))
    with pytest.raises(ValueError, match="features of shape"):
        net(images, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="n_features"):
        HybridCNN(n_features=0)
