"""Reference architectures built here (no torchvision needed): ResNets in one
or two dimensions, ResNet-18 among them, and a plain MLP. The tests, the
benchmarks and the demo use them; nothing in the planner depends on them.
"""

from __future__ import annotations

from torch import nn


def _shortcut(conv, norm, in_ch: int, out_ch: int, stride: int):
    """A block's shortcut: None (identity) where the shape is kept, else a strided 1x1 conv with norm."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(conv(in_ch, out_ch, 1, stride=stride, bias=False), norm(out_ch))


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut (a 1x1 conv where the shape changes), then relu."""

    def __init__(self, conv, norm, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(conv, norm, in_ch, out_ch, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each with BN; the shortcut a 1x1 conv where the shape changes."""

    expansion = 4

    def __init__(self, conv, norm, in_ch: int, width: int, stride: int = 1):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1, self.bn1 = conv(in_ch, width, 1, bias=False), norm(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride=stride, padding=1, bias=False), norm(width)
        self.conv3, self.bn3 = conv(width, out_ch, 1, bias=False), norm(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(conv, norm, in_ch, out_ch, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """A ResNet of BasicBlocks (or Bottlenecks, block=Bottleneck) over 1-D signals (dims=1) or images (dims=2).

    ``imagenet_stem`` uses the 7x7 stride-2 conv and max-pool of ResNet-18;
    otherwise the stem is one 3x3 (or 3-tap) conv, for small inputs.
    """

    def __init__(self, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), *, dims: int = 2, in_channels: int = 3,
                 num_classes: int = 1000, imagenet_stem: bool = True, block=BasicBlock):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
        pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d}[dims]
        if imagenet_stem:
            stem = [conv(in_channels, widths[0], 7, stride=2, padding=3, bias=False), norm(widths[0]),
                    nn.ReLU(inplace=True), pool(3, stride=2, padding=1)]
        else:
            stem = [conv(in_channels, widths[0], 3, padding=1, bias=False), norm(widths[0]), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        layers, in_ch = [], widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths)):
            stage_blocks = []
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                stage_blocks.append(block(conv, norm, in_ch, width, stride))
                in_ch = width * getattr(block, "expansion", 1)
            layers.append(nn.Sequential(*stage_blocks))
        self.layers = nn.Sequential(*layers)
        self.pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}[dims](1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (11.7 M parameters, 224 x 224 inputs)."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), dims=2, num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (25.6 M parameters, 224 x 224 inputs): Bottleneck blocks (3, 4, 6, 3)."""
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), dims=2, num_classes=num_classes, block=Bottleneck)


def resnet1d(width: int = 32, num_classes: int = 10) -> ResNet:
    """A small 1-D ResNet for MNIST-1D signals of shape (batch, 1, 40)."""
    return ResNet((2, 2, 2), (width, width, 2 * width), dims=1, in_channels=1, num_classes=num_classes,
                  imagenet_stem=False)


def mlp(in_features: int = 64, hidden=(128, 64), num_classes: int = 10) -> nn.Sequential:
    """A plain MLP with ReLUs."""
    layers, prev = [], in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)
