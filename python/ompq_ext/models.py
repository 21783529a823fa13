"""Reference architectures built here (no torchvision needed): ResNets in one
or two dimensions, ResNet-18 among them, a Vision Transformer of torchvision's
ViT-B/16 shape, and a plain MLP. The tests, the
benchmarks and the demo use them; nothing in the planner depends on them.
"""

from __future__ import annotations

import torch
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


class _EncoderBlock(nn.Module):
    """Pre-norm transformer block as torchvision's ViT: attention through nn.MultiheadAttention, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """Patches by a strided conv, a class token, learned positions, pre-norm encoder blocks, a linear head."""

    def __init__(self, image_size=224, patch_size=16, layers=12, heads=12, dim=768, mlp_dim=3072, num_classes=1000):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        tokens = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.layers = nn.Sequential(*[_EncoderBlock(dim, heads, mlp_dim) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.layers(x))[:, 0])


def vit_b_16(num_classes: int = 1000) -> VisionTransformer:
    """ViT-B/16's shape (86.6 M parameters, 224 x 224 inputs), as torchvision's vit_b_16."""
    return VisionTransformer(num_classes=num_classes)
