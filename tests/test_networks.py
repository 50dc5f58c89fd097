"""Tests of the network factories: ConvNet and MLP shapes, depth rules, seeded initialisation, options."""

from __future__ import annotations

import pytest
import torch

from distillbench.harness.errors import ConfigError
from distillbench.harness.networks import build_network, resolve_network
from distillbench.harness.networks.convnet import auto_depth
from distillbench.harness.plugins import NETWORKS
from distillbench.harness.types import DatasetInfo


def make_info(channels: int, size: int, num_classes: int = 10) -> DatasetInfo:
    """A synthetic image dataset description of shape ``[channels, size, size]``."""
    return DatasetInfo(
        name=f"toy{channels}x{size}",
        modality="image",
        num_classes=num_classes,
        shape=(channels, size, size),
        class_names=tuple(str(c) for c in range(num_classes)),
    )


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


class TestConvNetShapes:
    @pytest.mark.parametrize("channels", [1, 3])
    @pytest.mark.parametrize(
        ("size", "feature_side"),
        # 8x8 gets two blocks and stops at 2x2 (8 -> 4 -> 2); 28 is padded to 32 in the first conv as in
        # the DC code, then three blocks: 32 -> 16 -> 8 -> 4.
        [(8, 2), (28, 4), (32, 4)],
    )
    def test_output_and_embed_shapes(self, channels: int, size: int, feature_side: int) -> None:
        """ConvNet maps [n, C, H, H] to logits [n, classes] and to width * side^2 features."""
        info = make_info(channels, size, num_classes=7)
        net = build_network("convnet", info, gen(0))
        x = torch.randn(5, channels, size, size)
        expected_dim = 128 * feature_side * feature_side
        assert net(x).shape == (5, 7), f"logits shape for {channels}x{size}x{size} input"
        assert net.embed(x).shape == (5, expected_dim), f"embed shape for {channels}x{size}x{size} input"
        assert net.feature_dim == expected_dim

    def test_digits_shapes(self) -> None:
        """The registered digits dataset (1x8x8, 10 classes) builds a ConvNet-2 with 128 * 2 * 2 features."""
        from distillbench.harness.plugins import DATASETS

        configured = DATASETS.resolve("digits")
        info = configured.obj(configured.params).info()
        net = build_network("convnet", info, gen(0))
        x = torch.randn(3, *info.shape)
        assert net(x).shape == (3, 10)
        assert net.embed(x).shape == (3, 128 * 2 * 2)

    def test_width_option(self) -> None:
        """``width`` sets the channels of every conv and thus the feature size."""
        net = build_network("convnet[width=16]", make_info(3, 32), gen(0))
        assert net.embed(torch.randn(2, 3, 32, 32)).shape == (2, 16 * 4 * 4)


class TestConvNetDepth:
    @pytest.mark.parametrize(("size", "depth"), [(8, 2), (16, 3), (28, 3), (32, 3), (64, 4), (128, 5), (256, 6)])
    def test_auto_depth(self, size: int, depth: int) -> None:
        """Auto depth is 3 for 28/32 pixels, one more per doubling above, and stops at 2x2 maps below."""
        assert auto_depth(size) == depth, f"auto depth for {size}x{size}"

    def test_auto_depth_counts_conv_blocks(self) -> None:
        """A 64x64 input gets four conv blocks and a 4x4 final map; 32x32 gets three."""
        for size, blocks in [(32, 3), (64, 4)]:
            net = build_network("convnet", make_info(3, size), gen(0))
            convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
            assert len(convs) == blocks, f"{size}x{size}: {len(convs)} conv blocks, expected {blocks}"
            assert net.embed(torch.randn(1, 3, size, size)).shape == (1, 128 * 4 * 4)

    def test_explicit_depth(self) -> None:
        """An explicit depth overrides auto: 2 on 32x32 leaves 8x8 maps, 3 on 8x8 leaves 1x1."""
        net = build_network("convnet[depth=2]", make_info(3, 32), gen(0))
        assert net.embed(torch.randn(1, 3, 32, 32)).shape == (1, 128 * 8 * 8)
        # The deepest depth the error message allows for 8x8 (3) builds and ends in 1x1 maps.
        net = build_network("convnet[depth=3]", make_info(1, 8), gen(0))
        assert net.embed(torch.randn(1, 1, 8, 8)).shape == (1, 128)

    @pytest.mark.parametrize(("size", "depth", "allowed"), [(8, 4, 3), (32, 6, 5), (28, 6, 5)])
    def test_too_deep_raises_config_error(self, size: int, depth: int, allowed: int) -> None:
        """A depth whose poolings would shrink the map below 1 pixel is a ConfigError naming the limit."""
        with pytest.raises(ConfigError) as excinfo:
            build_network(f"convnet[depth={depth}]", make_info(1, size), gen(0))
        message = str(excinfo.value)
        assert "too deep" in message, message
        assert f"depth <= {allowed}" in message, f"message should name the allowed depth {allowed}: {message}"

    def test_no_pooling_allows_any_depth(self) -> None:
        """Without pooling the map never shrinks, so depth is not limited by the input size."""
        net = build_network("convnet[depth=4,pooling=none,width=8]", make_info(1, 8), gen(0))
        assert net.embed(torch.randn(2, 1, 8, 8)).shape == (2, 8 * 8 * 8)

    def test_non_square_input_rejected(self) -> None:
        """ConvNet needs square images and says so."""
        info = DatasetInfo(name="wide", modality="image", num_classes=2, shape=(1, 8, 16), class_names=("a", "b"))
        with pytest.raises(ConfigError, match="square"):
            build_network("convnet", info, gen(0))


class TestSeededInit:
    @staticmethod
    def params_of(spec: str, seed: int) -> dict[str, torch.Tensor]:
        return build_network(spec, make_info(3, 32), gen(seed)).state_dict()

    @pytest.mark.parametrize("spec", ["convnet", "mlp"])
    def test_same_seed_same_parameters(self, spec: str) -> None:
        """Two builds from equally seeded generators have identical parameters."""
        a, b = self.params_of(spec, 3), self.params_of(spec, 3)
        for name in a:
            assert torch.equal(a[name], b[name]), f"{spec}: parameter {name} differs for the same seed"

    @pytest.mark.parametrize("spec", ["convnet", "mlp"])
    def test_different_seed_different_parameters(self, spec: str) -> None:
        """Different seeds give different weights in every conv / linear layer."""
        a, b = self.params_of(spec, 3), self.params_of(spec, 4)
        weights = [n for n in a if n.endswith("weight") and a[n].dim() > 1]
        assert weights, "no conv/linear weights found"
        for name in weights:
            assert not torch.equal(a[name], b[name]), f"{spec}: parameter {name} equal for seeds 3 and 4"

    def test_global_rng_does_not_matter(self) -> None:
        """Parameters depend only on the generator passed in, not on torch's global RNG state."""
        with torch.random.fork_rng():
            torch.manual_seed(1)
            a = self.params_of("convnet", 0)
            torch.manual_seed(2)
            b = self.params_of("convnet", 0)
        for name in a:
            assert torch.equal(a[name], b[name]), f"parameter {name} depends on the global RNG"

    def test_default_init_bounds(self) -> None:
        """Conv/linear weights and biases lie in U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default."""
        net = build_network("convnet", make_info(3, 32), gen(0))
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                bound = module.weight[0].numel() ** -0.5
                assert module.weight.abs().max() <= bound, f"{name}.weight exceeds the default bound"
                # Spread close to the bound: a uniform of this many draws reaches ~its edges.
                assert module.weight.abs().max() > 0.9 * bound, f"{name}.weight is drawn too narrowly"
                assert module.bias.abs().max() <= bound, f"{name}.bias exceeds the default bound"


class TestConvNetOptions:
    @pytest.mark.parametrize("norm", ["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"])
    @pytest.mark.parametrize("size", [8, 28, 32])
    def test_norms_build_and_run(self, norm: str, size: int) -> None:
        """Every normalisation builds, runs forward and backward, and gives finite logits."""
        net = build_network(f"convnet[norm={norm},width=16]", make_info(3, size), gen(0))
        net.train()
        out = net(torch.randn(4, 3, size, size))
        assert out.shape == (4, 10)
        assert torch.isfinite(out).all(), f"norm={norm}, size={size}: non-finite logits"
        out.sum().backward()

    def test_instancenorm_is_per_channel_groupnorm(self) -> None:
        """``instancenorm`` is a GroupNorm with one group per channel (the DC code's choice)."""
        net = build_network("convnet[width=16]", make_info(1, 32), gen(0))
        norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert len(norms) == 3
        assert all(m.num_groups == m.num_channels == 16 for m in norms)

    @pytest.mark.parametrize(("pooling", "side"), [("avgpool", 2), ("maxpool", 2), ("none", 8)])
    def test_poolings_build_and_run(self, pooling: str, side: int) -> None:
        """Each pooling builds and runs (two poolings on 8x8 leave 2x2); ``none`` keeps the 8x8 map."""
        net = build_network(f"convnet[pooling={pooling},width=16]", make_info(1, 8), gen(0))
        x = torch.randn(2, 1, 8, 8)
        assert net.embed(x).shape == (2, 16 * side * side), f"pooling={pooling}"
        assert net(x).shape == (2, 10)

    @pytest.mark.parametrize("activation", ["relu", "leakyrelu", "sigmoid", "swish"])
    def test_activations_build_and_run(self, activation: str) -> None:
        """Each activation builds and runs."""
        net = build_network(f"convnet[activation={activation},width=16]", make_info(1, 8), gen(0))
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)

    def test_unknown_norm_rejected(self) -> None:
        """A norm outside the allowed list is a ConfigError listing the valid norms."""
        with pytest.raises(ConfigError, match="'norm'.*instancenorm.*weirdnorm"):
            resolve_network("convnet[norm=weirdnorm]")


class TestMLP:
    def test_default_shapes(self) -> None:
        """The default MLP is 128-128 on flattened input; embed is the last hidden layer."""
        info = make_info(3, 32, num_classes=4)
        net = build_network("mlp", info, gen(0))
        x = torch.randn(6, 3, 32, 32)
        assert net(x).shape == (6, 4)
        assert net.embed(x).shape == (6, 128)
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
        assert first.in_features == 3 * 32 * 32

    def test_hidden_spec_parsing(self) -> None:
        """``mlp[hidden=256/64]`` parses to hidden widths (256, 64) and builds those layers."""
        configured = NETWORKS.resolve("mlp[hidden=256/64]")
        assert configured.params.hidden == (256, 64)
        net = configured.obj(configured.params).build(make_info(1, 8), gen(0))
        linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(64, 256), (256, 64), (64, 10)]
        x = torch.randn(2, 1, 8, 8)
        assert net.embed(x).shape == (2, 64)
        assert net(x).shape == (2, 10)

    def test_non_positive_width_rejected(self) -> None:
        """A zero hidden width is a ConfigError saying widths must be positive."""
        with pytest.raises(ConfigError, match="positive"):
            NETWORKS.resolve("mlp[hidden=128/0]")
