"""Towers, distance, contrastive loss, pair heads and the BiRNN+conv encoder of the Quora pair models."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.layers import ResidualLinearBlock
from models.siamese import (
    BiRNNConvEncoder,
    ContrastiveLoss,
    ResidualTower,
    SiameseDistance,
    SiameseFCHead,
    SiameseTextClassifier,
    build_pair_model,
    contrastive_loss,
    pair_loss,
    pair_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN_DIM, VOCAB, PAD = 16, 30, 0


def _build(variant: str, **overrides) -> nn.Module:
    kwargs = dict(in_dim=IN_DIM, vocab_size=VOCAB, emb_dim=8, hidden=32, dropout=0.1,
                  activation="relu", erase_relu=False, residual_scale=1.0, rnn="gru",
                  rnn_hidden=16, conv_channels=24, kernel_size=3)
    kwargs.update(overrides)
    return build_pair_model(variant, **kwargs)


def _encoder(rnn: str = "gru", **overrides) -> BiRNNConvEncoder:
    kwargs = dict(vocab_size=VOCAB, emb_dim=8, rnn=rnn, rnn_hidden=16, conv_channels=24,
                  kernel_size=3, dropout=0.1)
    kwargs.update(overrides)
    return BiRNNConvEncoder(**kwargs)


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


# ---------------------------------------------------------------- tower
def test_tower_has_three_residual_layers_with_batchnorm():
    tower = ResidualTower(IN_DIM, 32, dropout=0.1)
    blocks = [m for m in tower.modules() if isinstance(m, ResidualLinearBlock)]
    assert len(blocks) == 3
    assert sum(isinstance(m, nn.BatchNorm1d) for m in tower.modules()) == 3
    assert tower(torch.randn(5, IN_DIM)).shape == (5, 32)
    assert tower.out_dim == 32


def test_selu_tower_has_no_batchnorm_and_lecun_init():
    torch.manual_seed(0)
    tower = ResidualTower(256, 128, dropout=0.1, activation="selu")
    assert sum(isinstance(m, ResidualLinearBlock) for m in tower.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm1d) for m in tower.modules())
    assert any(isinstance(m, nn.AlphaDropout) for m in tower.modules())
    assert tower.stem.weight.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.1)
    assert torch.count_nonzero(tower.stem.bias) == 0


def test_erase_relu_lets_tower_output_go_negative():
    torch.manual_seed(0)
    x = torch.randn(64, IN_DIM)
    assert (ResidualTower(IN_DIM, 32, 0.0).eval()(x) >= 0).all()
    assert (ResidualTower(IN_DIM, 32, 0.0, erase_relu=True).eval()(x) < 0).any()


# ---------------------------------------------------------------- distance and loss
def test_distance_is_symmetric_zero_on_identical_inputs_and_positive_otherwise():
    torch.manual_seed(0)
    model = SiameseDistance(ResidualTower(IN_DIM, 32, dropout=0.1)).eval()
    a, b = torch.randn(6, IN_DIM), torch.randn(6, IN_DIM)
    d = model(a, b)
    assert d.shape == (6,)
    torch.testing.assert_close(d, model(b, a))
    assert (d > 1e-2).all()
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(
        d, torch.linalg.vector_norm(unit(model.tower(a), dim=1) - unit(model.tower(b), dim=1),
                                    dim=1), rtol=1e-4, atol=1e-4)
    assert (d <= 2 + 1e-4).all()  # unit-length embeddings: distances lie in [0, 2]
    torch.testing.assert_close(model(a, a), torch.zeros(6), rtol=0, atol=1e-3)
    raw = SiameseDistance(model.tower, normalize=False).eval()
    torch.testing.assert_close(
        raw(a, b), torch.linalg.vector_norm(model.tower(a) - model.tower(b), dim=1),
        rtol=1e-4, atol=1e-4)


def test_distance_gradient_is_finite_at_zero_distance():
    torch.manual_seed(0)
    model = SiameseDistance(ResidualTower(IN_DIM, 32, dropout=0.0))
    a = torch.randn(8, IN_DIM, requires_grad=True)
    model(a, a.detach().clone()).sum().backward()
    grads = [a.grad] + [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)


def test_contrastive_loss_on_hand_examples():
    d = torch.tensor([0.0, 0.5, 2.0, 0.3])
    target = torch.tensor([1, 1, 0, 0])
    # similar: 0, 0.25; dissimilar: max(0, 1-2)^2 = 0, (1-0.3)^2 = 0.49
    assert contrastive_loss(d, target, margin=1.0).item() == pytest.approx(0.74 / 4)
    assert ContrastiveLoss(margin=1.0)(d, target).item() == pytest.approx(0.74 / 4)
    # a larger margin pushes the dissimilar pairs harder: (3-2)^2 = 1, (3-0.3)^2 = 7.29
    assert ContrastiveLoss(margin=3.0)(d, target.float()).item() == pytest.approx(8.54 / 4)


# ---------------------------------------------------------------- pair heads
def test_fc_head_is_symmetric_in_its_inputs():
    torch.manual_seed(0)
    model = SiameseFCHead(ResidualTower(IN_DIM, 32, dropout=0.0), hidden=16, dropout=0.0)
    a, b = torch.randn(7, IN_DIM), torch.randn(7, IN_DIM)
    # train mode too: both sides share one BatchNorm batch, so swapping keeps the statistics
    torch.testing.assert_close(model(a, b), model(b, a))
    model.eval()
    logits = model(a, b)
    assert logits.shape == (7,)
    torch.testing.assert_close(logits, model(b, a))


def test_text_classifier_is_symmetric_and_accepts_different_lengths():
    torch.manual_seed(0)
    model = SiameseTextClassifier(_encoder(), hidden=16, dropout=0.1).eval()
    ids_a, ids_b = torch.randint(1, VOCAB, (4, 5)), torch.randint(1, VOCAB, (4, 9))
    logits = model(ids_a, ids_b)
    assert logits.shape == (4,)
    torch.testing.assert_close(logits, model(ids_b, ids_a))


# ---------------------------------------------------------------- BiRNN + conv encoder
@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_encoder_ignores_extra_padding_and_sees_real_tokens(rnn):
    torch.manual_seed(0)
    enc = _encoder(rnn).eval()
    ids = torch.tensor([[5, 3, 8, 2, PAD], [7, 1, PAD, PAD, PAD], [4, 4, 9, 6, 11]])
    out = enc(ids)
    assert out.shape == (3, 24)
    longer = torch.cat([ids, torch.full((3, 6), PAD)], dim=1)
    torch.testing.assert_close(enc(longer), out, rtol=1e-5, atol=1e-6)
    # a row's encoding does not depend on the other rows of the batch
    torch.testing.assert_close(enc(ids[1:2]), out[1:2], rtol=1e-5, atol=1e-6)
    changed = ids.clone()
    changed[1, 1] = 12
    diff = (enc(changed) - out).abs().amax(dim=1)
    assert diff[1] > 1e-4
    assert diff[0] == 0 and diff[2] == 0


def test_encoder_handles_all_padding_rows():
    torch.manual_seed(0)
    enc = _encoder()
    ids = torch.tensor([[5, 3, PAD], [PAD, PAD, PAD]])
    out = enc(ids)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[1]) == 0
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


def test_gradient_reaches_the_embedding_of_used_tokens():
    torch.manual_seed(0)
    enc = _encoder(dropout=0.0)
    enc(torch.tensor([[5, 3, 8, PAD]])).sum().backward()
    grad = enc.embedding.weight.grad
    assert grad[[5, 3, 8]].abs().sum(dim=1).gt(0).all()
    assert torch.count_nonzero(grad[PAD]) == 0
    assert torch.count_nonzero(grad[20]) == 0


def test_encoder_starts_from_given_embeddings_and_can_freeze_them():
    vectors = torch.randn(VOCAB, 8)
    enc = _encoder(embeddings=vectors, freeze_embeddings=True)
    torch.testing.assert_close(enc.embedding.weight, vectors)
    assert not enc.embedding.weight.requires_grad
    assert _encoder(embeddings=vectors).embedding.weight.requires_grad
    with pytest.raises(ValueError, match="embeddings must have shape"):
        _encoder(embeddings=torch.randn(VOCAB, 5))
    with pytest.raises(ValueError, match="rnn"):
        _encoder(rnn="transformer")


# ---------------------------------------------------------------- factory
def test_build_pair_model_shapes_for_every_variant():
    torch.manual_seed(0)
    a, b = torch.randn(5, IN_DIM), torch.randn(5, IN_DIM)
    ids_a, ids_b = torch.randint(0, VOCAB, (5, 7)), torch.randint(0, VOCAB, (5, 4))
    assert isinstance(_build("siamese"), SiameseDistance)
    assert isinstance(_build("fc_head"), SiameseFCHead)
    assert isinstance(_build("birnn_conv", rnn="lstm"), SiameseTextClassifier)
    for variant, inputs in [("siamese", (a, b)), ("fc_head", (a, b)),
                            ("birnn_conv", (ids_a, ids_b))]:
        out = _build(variant)(*inputs)
        assert out.shape == (5,), variant
    # embeddings alone give vocab_size and emb_dim
    model = _build("birnn_conv", vocab_size=None, emb_dim=None, embeddings=torch.randn(12, 6))
    assert model.encoder.embedding.weight.shape == (12, 6)


def test_build_pair_model_errors_name_the_missing_argument():
    with pytest.raises(ValueError, match="in_dim"):
        _build("siamese", in_dim=None)
    with pytest.raises(ValueError, match="in_dim"):
        _build("fc_head", in_dim=None)
    with pytest.raises(ValueError, match="vocab_size"):
        _build("birnn_conv", vocab_size=None)
    with pytest.raises(ValueError, match="emb_dim"):
        _build("birnn_conv", emb_dim=None)
    with pytest.raises(ValueError, match="variant"):
        _build("transformer")
    with pytest.raises(ValueError, match="variant"):
        pair_loss("transformer")


def test_pair_loss_and_scores_follow_the_variant():
    assert isinstance(pair_loss("siamese", margin=2.0), ContrastiveLoss)
    assert pair_loss("siamese", margin=2.0).margin == 2.0
    assert isinstance(pair_loss("fc_head"), nn.BCEWithLogitsLoss)
    assert isinstance(pair_loss("birnn_conv"), nn.BCEWithLogitsLoss)
    out = torch.tensor([0.1, 2.0])
    torch.testing.assert_close(pair_scores("siamese", out), -out)
    torch.testing.assert_close(pair_scores("fc_head", out), out)
    torch.testing.assert_close(pair_scores("birnn_conv", out), out)


# ---------------------------------------------------------------- tiny training
def _vector_pairs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Duplicates share the first 8 dims (plus a little noise); the other 8 dims are loud noise."""
    content = torch.randn(n, 8, generator=gen)
    label = (torch.rand(n, generator=gen) < 0.5).float()
    other = torch.randn(n, 8, generator=gen)
    content_b = torch.where(label[:, None] == 1,
                            content + 0.1 * torch.randn(n, 8, generator=gen), other)
    a = torch.cat([content, 2 * torch.randn(n, IN_DIM - 8, generator=gen)], dim=1)
    b = torch.cat([content_b, 2 * torch.randn(n, IN_DIM - 8, generator=gen)], dim=1)
    return a, b, label


def _right_padded(n: int, steps: int, lengths: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
    ids = torch.randint(1, 29, (n, steps), generator=gen)
    ids[torch.arange(steps)[None] >= lengths[:, None]] = PAD
    return ids


def _token_pairs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Duplicates swap about half their tokens for a synonym (1<->2, 3<->4, ...) and carry more padding.

    Synonyms are unrelated tokens to an untrained encoder, so the model has to learn them.
    """
    steps = 8
    lengths = torch.randint(4, steps + 1, (n,), generator=gen)
    a = _right_padded(n, steps, lengths, gen)
    synonym = torch.where(a % 2 == 1, a + 1, a - 1)
    swap = (torch.rand(n, steps, generator=gen) < 0.5) & (a != PAD)
    copy = torch.cat([torch.where(swap, synonym, a), torch.full((n, 2), PAD)], dim=1)
    label = (torch.rand(n, generator=gen) < 0.5).float()
    b = torch.where(label[:, None] == 1, copy, _right_padded(n, steps + 2, lengths, gen))
    return a, b, label


def _train_and_score(variant: str, steps: int = 50, seed: int = 0) -> tuple[float, float]:
    """AUC of pair_scores on held-out pairs before and after `steps` full-batch Adam steps."""
    gen = torch.Generator().manual_seed(seed)
    make, n = (_token_pairs, 400) if variant == "birnn_conv" else (_vector_pairs, 800)
    train, test = make(n, gen), make(n, gen)
    torch.manual_seed(seed)
    model = _build(variant, dropout=0.0)
    loss_fn = pair_loss(variant, margin=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def held_out_auc() -> float:
        model.eval()
        with torch.no_grad():
            auc = _auc(pair_scores(variant, model(test[0], test[1])), test[2])
        model.train()
        return auc

    before = held_out_auc()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(train[0], train[1]), train[2])
        loss.backward()
        opt.step()
    return before, held_out_auc()


@pytest.mark.parametrize("variant", ["siamese", "fc_head", "birnn_conv"])
def test_tiny_training_separates_duplicates(variant):
    before, after = _train_and_score(variant)
    assert after > 0.9, (before, after)
    assert after > before + 0.25, (before, after)
