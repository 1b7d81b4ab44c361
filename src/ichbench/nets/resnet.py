"""ResNet-18 networks of the self-supervised rows (randomly initialised, never ImageNet weights).

ResNetEncoderDecoder (one-stage rows: NSA, NSA-Intensity, FPI, FPI-Poisson, CutPaste; as in Schlueter
et al. 2022 and MedIAnomaly): the torchvision ResNet-18 trunk (7x7 stride-2 stem, max-pool, 4 stages of
2 basic blocks, 512 x S/32 x S/32), a 1x1 bottleneck 512 -> 256 -> 128, and a decoder that mirrors the
trunk with transposed basic blocks, each stage ending in a x2 upsampling block
(128 -> 256 -> 128 -> 64 -> 64), then a transposed conv 64 -> 32 (x2, back to S) and a 3x3 conv to one
channel of logits. The network returns logits; the anomaly map is their sigmoid.

ResNetProjectionClassifier (two-stage rows: CutPaste 2-stage, AnatPaste; Li et al. 2021; MedIAnomaly
`ssl/two_stage/model.py: ProjectionNet` with `head_layer` 1): the same trunk, global average pooling to a
512-d embedding (fc removed), a projection head of layers [512, 128], each Linear -> BatchNorm1d -> ReLU,
and a linear classifier 128 -> 2 (normal / augmented); 11,506,370 parameters at 3 input channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18


class ResNet18Trunk(nn.Module):
    """torchvision's ResNet-18 without pooling and fc: (B, C, S, S) -> layer3 (256, S/16), layer4 (512, S/32)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return l3, self.layer4(l3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[1]


def _conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout))


class TransposedBasicBlock(nn.Module):
    """A basic block run backwards: 3x3 conv, then a 3x3 transposed conv (stride 2 when upsampling),
    with a 1x1 (transposed) shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, upsample: bool = False):
        super().__init__()
        self.conv1 = _conv_bn(cin, cin)
        if upsample:
            self.conv2 = nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False),
                                       nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 1, 2, 0, output_padding=1, bias=False),
                                          nn.BatchNorm2d(cout))
        else:
            self.conv2 = _conv_bn(cin, cout)
            self.shortcut = nn.Identity() if cin == cout else _conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNetEncoderDecoder(nn.Module):
    """(B, C, S, S) -> (B, 1, S, S) logits of the pixel-wise anomaly probability."""

    def __init__(self, in_channels: int = 3, bottleneck: tuple[int, int] = (256, 128),
                 decoder: tuple[int, ...] = (256, 128, 64, 64), head: int = 32):
        super().__init__()
        self.encoder = ResNet18Trunk(in_channels)
        b1, b2 = bottleneck
        self.bottleneck = nn.Sequential(
            nn.Conv2d(512, b1, 1, bias=False), nn.BatchNorm2d(b1), nn.ReLU(inplace=True),
            nn.Conv2d(b1, b2, 1, bias=False), nn.BatchNorm2d(b2), nn.ReLU(inplace=True))
        stages, cin = [], b2
        for cout in decoder:            # S/32 -> S/16 -> S/8 -> S/4 -> S/2
            stages += [TransposedBasicBlock(cin, cin), TransposedBasicBlock(cin, cout, upsample=True)]
            cin = cout
        self.decoder = nn.Sequential(*stages)
        self.head = nn.Sequential(      # S/2 -> S, one channel of logits
            nn.ConvTranspose2d(cin, head, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm2d(head),
            nn.ReLU(inplace=True), nn.Conv2d(head, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.decoder(self.bottleneck(self.encoder(x))))
        if y.shape[-2:] != x.shape[-2:]:      # sizes that are not multiples of 32
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y


class ResNetProjectionClassifier(nn.Module):
    """(B, C, S, S) -> (512-d embedding, 2 logits normal / augmented)."""

    def __init__(self, in_channels: int = 3, head_layers: tuple[int, ...] = (512, 128)):
        super().__init__()
        self.encoder = ResNet18Trunk(in_channels)
        layers, cin = [], 512
        for cout in head_layers:
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, 2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return emb, self.classifier(self.head(emb))
