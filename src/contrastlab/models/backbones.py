"""ResNet backbones from torchvision, with an optional CIFAR stem and channel-width multiplier.

The backbone is a torchvision ``ResNet`` whose classifier ``fc`` is ``nn.Identity``, so its output is
the pooled feature vector and its state-dict keys are torchvision's: an exported backbone loads into
``torchvision.models.resnet50()`` with ``strict=True`` (after the same stem change, if any).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

from contrastlab.config import ModelConfig
from contrastlab.errors import UserError

_ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class WideResNet(resnet.ResNet):
    """torchvision's ResNet with every stage's width scaled by ``width`` (1.0 = torchvision's).

    Small widths (0.25, 0.5) make CPU-sized experiments possible; the module layout, and so the
    state-dict keys, are torchvision's.
    """

    def __init__(self, block, layers, width: float = 1.0, norm_layer=None):
        super().__init__(block, layers, norm_layer=norm_layer)
        if width == 1.0:
            return
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        norm_layer = self._norm_layer
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.fc = nn.Linear(widths[3] * block.expansion, 1000)
        for m in self.modules():  # torchvision's initialization, for the rebuilt layers
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_backbone(cfg: ModelConfig, norm_layer=None) -> tuple[resnet.ResNet, int]:
    """Return ``(backbone, feature_dim)``; ``norm_layer`` replaces BatchNorm2d (e.g. split BN)."""
    if cfg.backbone not in _ARCHS:
        raise UserError(f"unknown backbone '{cfg.backbone}'; valid: {', '.join(_ARCHS)}")
    block, layers = _ARCHS[cfg.backbone]
    net = WideResNet(block, layers, width=cfg.width, norm_layer=norm_layer)
    if cfg.cifar_stem:
        # Small images: a 3x3 stride-1 first conv and no max-pool keep the 32x32 resolution
        # in layer1, as in the MoCo CIFAR-10 reference.
        out = net.conv1.out_channels
        net.conv1 = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim
