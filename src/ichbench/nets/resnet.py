"""ResNet-18 networks of the self-supervised rows (randomly initialised, never ImageNet weights).

ResNetEncoderDecoder (one-stage rows: NSA, NSA-Intensity, FPI, FPI-Poisson, CutPaste): MedIAnomaly's
`resnet18_enc_dec` (`ssl/one_stage/model/resnet.py`, from the NSA authors' code, ResNetEncDec([2, 2, 2, 2],
[1, 1, 1]) with max-pool, no pre-activation): the torchvision ResNet-18 trunk (7x7 stride-2 stem, max-pool,
4 stages of 2 basic blocks, 512 x S/32 x S/32); a 1x1 bottleneck 512 -> 256 -> ReLU -> 128 -> ReLU (no
BatchNorm, no bias); a decoder of one transposed basic block per stage at 64, 32, 16 channels, each x2
(S/32 -> S/4); bilinear x2 upsampling (align_corners=True, as `nn.UpsamplingBilinear2d`) and a 7x7 stride-2
transposed conv 16 -> 1 (no bias) back to S. Kaiming-normal (fan_out) init of every Conv2d, BatchNorm
weight 1 / bias 0, transposed convs at PyTorch's default init (the reference's init loop skips them).
11,497,712 parameters at 3 input channels, 11,491,440 at 1. Returns logits; the anomaly map is their sigmoid.

ResNetProjectionClassifier (two-stage rows: CutPaste 2-stage, AnatPaste; Li et al. 2021; MedIAnomaly
`ssl/two_stage/model.py: ProjectionNet` with `head_layer` 1): the same trunk, global average pooling to a
512-d embedding (fc removed), a projection head of layers [512, 128], each Linear -> BatchNorm1d -> ReLU,
and a linear classifier 128 -> 2 (normal / augmented); 11,506,370 parameters at 3 input channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (expansion 1): two 3x3 convolutions with batch norm and a shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class _ResNet18(nn.Module):
    """torchvision's `resnet18(weights=None)`: the same modules, names, construction order and initialisation
    (so the same parameters from the same seed; a test compares them), without importing torchvision
    (~3 s of CPU per job)."""

    def __init__(self):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 2)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 1000)       # unused, but built: its initialisation draws from the RNG
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


class ResNet18Trunk(nn.Module):
    """torchvision's ResNet-18 without pooling and fc: (B, C, S, S) -> layer3 (256, S/16), layer4 (512, S/32)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        net = _ResNet18()
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return l3, self.layer4(l3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[1]


class TransposedBasicBlock(nn.Module):
    """The reference's TransposeBasicBlock, upsampling x2: 3x3 stride-2 transposed conv -> BN -> ReLU ->
    3x3 conv -> BN, plus a 1x1 stride-2 transposed conv -> BN on the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, 1, stride=2, output_padding=1, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNetEncoderDecoder(nn.Module):
    """(B, C, S, S) -> (B, 1, S, S) logits of the pixel-wise anomaly probability."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.encoder = ResNet18Trunk(in_channels)
        self.bottleneck = nn.Sequential(nn.Conv2d(512, 256, 1, bias=False), nn.ReLU(inplace=True),
                                        nn.Conv2d(256, 128, 1, bias=False), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(TransposedBasicBlock(128, 64), TransposedBasicBlock(64, 32),
                                     TransposedBasicBlock(32, 16))
        self.head = nn.ConvTranspose2d(16, 1, 7, stride=2, padding=3, output_padding=1, bias=False)
        for m in self.modules():   # the reference's init (ConvTranspose2d is no Conv2d: left at default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decoder(self.bottleneck(self.encoder(x)))
        y = self.head(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True))
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
