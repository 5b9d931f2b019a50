"""Siamese models for question pairs: residual towers over sentence vectors, a BiRNN+conv text encoder."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.layers import ResidualLinearBlock, activation, dropout, lecun_normal_

PairVariant = Literal["siamese", "fc_head", "birnn_conv"]
VARIANTS: tuple[str, ...] = ("siamese", "fc_head", "birnn_conv")
RNNS: tuple[str, ...] = ("gru", "lstm")
TOWER_DEPTH = 3  # residual layers per tower, as in the note

# the constructors below take arguments named `activation` and `dropout`, which shadow these
_activation = activation
_dropout = dropout


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"pair model variant must be one of {VARIANTS}, got {variant!r}")


class ResidualTower(nn.Module):
    """Linear(in_dim -> hidden) then 3 residual layers (BatchNorm unless selu): (B, in_dim) -> (B, hidden)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, activation: str = "relu",
                 erase_relu: bool = False, residual_scale: float = 1.0) -> None:
        super().__init__()
        self.out_dim = hidden
        self.stem = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*[
            ResidualLinearBlock(hidden, dropout, activation, erase_relu, residual_scale)
            for _ in range(TOWER_DEPTH)
        ])
        if activation == "selu":
            lecun_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def embed_pair(tower: nn.Module, a: torch.Tensor,
               b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides through the tower in one batch, so BatchNorm sees the same statistics for each."""
    out = tower(torch.cat([a, b]))
    return out[: len(a)], out[len(a):]


class SiameseDistance(nn.Module):
    """Shared tower on both sides; forward(a, b) -> Euclidean distance (B,) between the embeddings."""

    eps = 1e-8  # inside the sqrt: finite gradient at zero distance

    def __init__(self, tower: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.tower = tower
        # unit-length embeddings keep distances in [0, 2], so a margin of ~1 means the same
        # thing whatever the tower's width; without it the margin is dwarfed by sqrt(width)
        self.normalize = normalize

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ea, eb = embed_pair(self.tower, a, b)
        if self.normalize:
            ea, eb = nn.functional.normalize(ea, dim=1), nn.functional.normalize(eb, dim=1)
        return torch.sqrt((ea - eb).pow(2).sum(dim=1) + self.eps)


def contrastive_loss(distance: torch.Tensor, target: torch.Tensor,
                     margin: float = 1.0) -> torch.Tensor:
    """Mean of d^2 for similar pairs (target 1) and max(0, margin - d)^2 for dissimilar ones (target 0)."""
    target = target.to(distance.dtype)
    dissimilar = torch.clamp(margin - distance, min=0.0).pow(2)
    return (target * distance.pow(2) + (1.0 - target) * dissimilar).mean()


class ContrastiveLoss(nn.Module):
    """contrastive_loss as a module, so it plugs in as loss_fn(distance, target)."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, distance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(distance, target, self.margin)


def pair_features(ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
    """[|ea - eb|, ea * eb]: (B, 2D), unchanged when the two sides swap."""
    return torch.cat([(ea - eb).abs(), ea * eb], dim=1)


class PairHead(nn.Module):
    """MLP over pair_features: Linear, activation, dropout, Linear -> logit (B,)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_dim, hidden), _activation(activation),
            _dropout(activation, dropout), nn.Linear(hidden, 1),
        )
        if activation == "selu":
            lecun_normal_(self)

    def forward(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        return self.mlp(pair_features(ea, eb)).squeeze(-1)


class SiameseFCHead(nn.Module):
    """Shared tower on both sides, then a PairHead: forward(a, b) -> logit (B,), symmetric in a and b."""

    def __init__(self, tower: nn.Module, hidden: int, dropout: float,
                 activation: str = "relu") -> None:
        super().__init__()
        self.tower = tower
        self.head = PairHead(tower.out_dim, hidden, dropout, activation)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(*embed_pair(self.tower, a, b))


class BiRNNConvEncoder(nn.Module):
    """Right-padded token ids (B, T) -> embedding -> BiGRU/BiLSTM -> Conv1d -> masked max-pool -> (B, C)."""

    def __init__(self, vocab_size: int, emb_dim: int, rnn: str = "gru", rnn_hidden: int = 64,
                 conv_channels: int = 64, kernel_size: int = 3, dropout: float = 0.1,
                 padding_idx: int = 0, embeddings: torch.Tensor | None = None,
                 freeze_embeddings: bool = False, activation: str = "relu") -> None:
        super().__init__()
        if rnn not in RNNS:
            raise ValueError(f"rnn must be one of {RNNS}, got {rnn!r}")
        if embeddings is not None and tuple(embeddings.shape) != (vocab_size, emb_dim):
            raise ValueError(f"embeddings must have shape ({vocab_size}, {emb_dim}) "
                             f"(vocab_size, emb_dim), got {tuple(embeddings.shape)}")
        self.padding_idx, self.out_dim = padding_idx, conv_channels
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=padding_idx)
        if embeddings is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(embeddings)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        rnn_cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = rnn_cls(emb_dim, rnn_hidden, batch_first=True, bidirectional=True)
        self.conv = nn.Conv1d(2 * rnn_hidden, conv_channels, kernel_size, padding="same")
        self.act = _activation(activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        steps = ids.shape[1]
        lengths = (ids != self.padding_idx).sum(dim=1)
        mask = torch.arange(steps, device=ids.device) < lengths[:, None]  # (B, T)
        x = self.drop(self.embedding(ids))
        # all-padding rows run one step and are zeroed after pooling
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        h, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=steps)
        # zero the padding so the conv's window past the end sees zeros however long the padding
        h = self.drop(h) * mask[..., None]
        c = self.act(self.conv(h.transpose(1, 2)))  # (B, C, T)
        pooled = c.masked_fill(~mask[:, None, :], float("-inf")).amax(dim=2)
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


class SiameseTextClassifier(nn.Module):
    """Shared text encoder on both sides, then a PairHead: forward(ids_a, ids_b) -> logit (B,)."""

    def __init__(self, encoder: nn.Module, hidden: int, dropout: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = PairHead(encoder.out_dim, hidden, dropout)

    def forward(self, ids_a: torch.Tensor, ids_b: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(ids_a), self.encoder(ids_b))


def build_pair_model(variant: PairVariant, *, in_dim: int | None = None,
                     vocab_size: int | None = None, hidden: int, dropout: float,
                     activation: str, erase_relu: bool, residual_scale: float, rnn: str,
                     rnn_hidden: int, conv_channels: int, kernel_size: int,
                     emb_dim: int | None = None, embeddings: torch.Tensor | None = None,
                     freeze_embeddings: bool = False) -> nn.Module:
    """The pair model named by `variant`: towers need in_dim; birnn_conv needs vocab_size and emb_dim or embeddings."""
    _check_variant(variant)
    if variant == "birnn_conv":
        if embeddings is not None:
            vocab_size = embeddings.shape[0] if vocab_size is None else vocab_size
            emb_dim = embeddings.shape[1] if emb_dim is None else emb_dim
        if vocab_size is None:
            raise ValueError("variant 'birnn_conv' needs vocab_size (or embeddings)")
        if emb_dim is None:
            raise ValueError("variant 'birnn_conv' needs emb_dim (or embeddings)")
        encoder = BiRNNConvEncoder(vocab_size, emb_dim, rnn, rnn_hidden, conv_channels,
                                   kernel_size, dropout, embeddings=embeddings,
                                   freeze_embeddings=freeze_embeddings, activation=activation)
        return SiameseTextClassifier(encoder, hidden, dropout)
    if in_dim is None:
        raise ValueError(f"variant {variant!r} needs in_dim (the question-vector size)")
    tower = ResidualTower(in_dim, hidden, dropout, activation, erase_relu, residual_scale)
    if variant == "siamese":
        return SiameseDistance(tower)
    return SiameseFCHead(tower, hidden, dropout, activation)


def pair_loss(variant: PairVariant, margin: float = 1.0) -> nn.Module:
    """ContrastiveLoss(margin) for "siamese" (outputs are distances), BCEWithLogitsLoss otherwise."""
    _check_variant(variant)
    return ContrastiveLoss(margin) if variant == "siamese" else nn.BCEWithLogitsLoss()


def pair_scores(variant: PairVariant, output: torch.Tensor) -> torch.Tensor:
    """Model output -> score where higher means more likely duplicate (-distance or the logit)."""
    _check_variant(variant)
    return -output if variant == "siamese" else output
