"""A small U-Net for per-pixel classification of atom columns, sized for live use.

Atoms span a few pixels at the model's native sampling, so a shallow network
with a modest receptive field suffices; width and depth are parameters so the
accuracy/speed trade-off can be measured (see the closing notes of issue 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def level_widths(width: int, depth: int, widths: Sequence[int] = ()) -> list[int]:
    """Channels at each resolution level: ``widths`` when given, else ``width * 2**level`` for ``depth + 1`` levels."""
    if not widths:
        return [width * 2**i for i in range(depth + 1)]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list at least two positive channel counts, got {list(widths)}")
    return [int(w) for w in widths]


class GlobalContext(nn.Module):
    """Condition feature maps on the whole input: a scale and shift per channel from their spatial mean.

    What a column looks like in a frame (its contrast, the probe, the noise) is a property of the whole
    frame, which the convolutions see only as far as their receptive field reaches.  Starts as the
    identity (the last layer is zero-initialised).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        last = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) scaled and shifted per channel by its own mean over H and W."""
        scale, shift = self.mlp(x.mean(dim=(2, 3))).chunk(2, dim=1)
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class UNet(nn.Module):
    """U-Net: ``depth`` down-sampling stages, channel widths ``width * 2**level`` (or ``widths``).

    Parameters
    ----------
    n_classes
        Output channels (class logits).
    width
        Channels at full resolution.
    depth
        Number of 2x down-sampling stages; inputs must have H and W divisible by ``2**depth``.
    in_channels
        Input channels (1 for images; 2 for a masked sinogram and its mask).
    widths
        Channels per level, full resolution first (overrides ``width`` and ``depth``): the
        low-resolution levels cost a sixteenth and a sixty-fourth of the full-resolution one per
        channel pair, so widening them buys capacity cheaply.
    global_context
        Condition the lowest-resolution features on their mean over the whole input
        (:class:`GlobalContext`).

    Notes
    -----
    Input (B, 1, H, W) float32, normalised intensity; output (B, n_classes, H, W) logits.
    """

    def __init__(
        self,
        n_classes: int = 4,
        width: int = 12,
        depth: int = 3,
        in_channels: int = 1,
        widths: Sequence[int] = (),
        global_context: bool = False,
    ) -> None:
        super().__init__()
        widths = level_widths(width, depth, widths)
        depth = len(widths) - 1
        self.depth = depth
        self.down = nn.ModuleList(
            [_block(in_channels, widths[0])] + [_block(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.merge = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], n_classes, 1)
        self.context = GlobalContext(widths[-1]) if global_context else None

    @property
    def multiple(self) -> int:
        """H and W of the input must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of normalised images."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        if self.context is not None:
            x = self.context(x)
        for i in reversed(range(self.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips.pop()], dim=1))
        return self.head(x)
