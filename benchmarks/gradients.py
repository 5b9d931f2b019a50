"""Shattered gradients at initialisation: a plain deep MLP against the same with residual
connections, with BatchNorm, with both (a ResNet), and with residual branches scaled by
1/sqrt(depth), at depths 10 / 30 / 50.

As in Balduzzi et al. (2017): a 1-D input on a fine grid in [-2, 2], a scalar output, the
gradient of the output with respect to the input at every grid point; its lag-1
autocorrelation is ~1 for smooth gradients and ~0 for white noise (shattered). Co-activation
is the share of ReLUs active per example. Each cell is the mean over --seeds initialisations,
and the last column is the ratio to the plain MLP of the same depth.

    python -m benchmarks.gradients [--depths 10,30,50] [--width 128] [--seeds 5]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from tasks.diagnostics import autocorrelation, coactivation

VARIANTS = ("plain", "residual", "batchnorm", "residual_batchnorm", "residual_scaled")


class Block(nn.Module):
    """Linear -> (BatchNorm) -> ReLU, optionally as a residual branch scaled by beta."""

    def __init__(self, width: int, residual: bool, batchnorm: bool, beta: float) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.linear.weight, nonlinearity="relu")
        nn.init.zeros_(self.linear.bias)
        self.norm = nn.BatchNorm1d(width) if batchnorm else nn.Identity()
        self.act = nn.ReLU()
        self.residual, self.beta = residual, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.act(self.norm(self.linear(x)))
        return x + self.beta * branch if self.residual else branch


def build(variant: str, depth: int, width: int) -> nn.Sequential:
    residual = variant.startswith("residual")
    batchnorm = variant.endswith("batchnorm")
    beta = depth ** -0.5 if variant == "residual_scaled" else 1.0
    layers: list[nn.Module] = [nn.Linear(1, width)]
    layers += [Block(width, residual, batchnorm, beta) for _ in range(depth)]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def measure(variant: str, depth: int, width: int, seed: int, points: int) -> tuple[float, float]:
    """(lag-1 autocorrelation of d output / d input over the grid, mean co-activation)."""
    torch.manual_seed(seed)
    model = build(variant, depth, width).train()  # BatchNorm normalises over the grid batch
    grid = torch.linspace(-2, 2, points).unsqueeze(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(grid).sum(), grid)
    r1 = float(autocorrelation(grad.squeeze(1).detach().numpy(), 1)[1])
    rates = coactivation(model, [grid.detach()])
    return r1, statistics.fmean(rates.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="10,30,50")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--points", type=int, default=256)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    print(f"MLP width {args.width}, ReLU, He init, 1-D input on {args.points} points in [-2, 2], "
          f"mean of {args.seeds} seeds")
    print(f"{'variant':20}{'depth':>6}{'autocorr lag 1':>16}{'co-activation':>15}"
          f"{'autocorr / plain':>18}")
    for depth in depths:
        plain = None
        for variant in VARIANTS:
            runs = [measure(variant, depth, args.width, seed, args.points)
                    for seed in range(args.seeds)]
            r1 = statistics.fmean(r for r, _ in runs)
            active = statistics.fmean(a for _, a in runs)
            plain = r1 if variant == "plain" else plain
            ratio = r1 / plain if plain else float("nan")
            print(f"{variant:20}{depth:>6}{r1:>16.3f}{active:>15.3f}{ratio:>18.2f}")


if __name__ == "__main__":
    main()
