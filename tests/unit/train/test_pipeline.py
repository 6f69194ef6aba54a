"""The pipeline's pieces: each starts from the dense model's weights under the dense names, and chained they
compute the dense model's logits (what DeepSpeed's stages pass along is the hidden state alone)."""

from __future__ import annotations

import torch
from torch import nn

from neox.model.gpt_neox import initialized
from neox.train.pipeline import EmbeddingPiece, LayerPiece, OutputPiece, next_token_loss, piece_names
from tests.conftest import REPO, tiny_config


def test_pieces_start_from_the_dense_weights_and_chain_into_the_dense_model():
    cfg = tiny_config(num_layers=3)
    dense = initialized(cfg, seed=11).eval()
    pieces = [
        EmbeddingPiece(cfg, None, seed=11),
        *(LayerPiece(cfg, None, 11, i) for i in range(cfg.num_layers)),
        OutputPiece(cfg, None, seed=11),
    ]
    dense_params = dict(dense.named_parameters())
    shapes = {name: tuple(p.shape) for name, p in dense_params.items()}
    seen = []
    for index, piece in enumerate(pieces):
        names = [piece.prefix + name for name, _ in piece.named_parameters()]
        assert names == piece_names(shapes, cfg.num_layers, index)  # the order rank 0 receives them in
        for name, param in piece.named_parameters():
            torch.testing.assert_close(param, dense_params[piece.prefix + name], rtol=0, atol=0)
        seen += names
    assert sorted(seen) == sorted(dense_params)
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(nn.Sequential(*pieces).eval()(ids), dense(ids), rtol=1e-6, atol=1e-6)


def test_init_from_weights_fill_each_piece_under_its_dense_names(tmp_path):
    from safetensors.torch import save_file

    from neox.pipeline.layout import WEIGHTS_FILE
    from neox.train.config import build_train_config
    from neox.train.engine import load_init_from

    cfg = tiny_config()
    trained = initialized(cfg, seed=5)
    save_file(dict(trained.state_dict()), str(tmp_path / WEIGHTS_FILE))
    pieces = [EmbeddingPiece(cfg, None, 0), LayerPiece(cfg, None, 0, 1), OutputPiece(cfg, None, 0)]
    train = build_train_config({"model": str(REPO / "configs" / "model" / "tiny.yml"), "init_from": str(tmp_path)})
    load_init_from(train, [(piece.prefix, piece) for piece in pieces])
    expected = dict(trained.named_parameters())
    for piece in pieces:
        for name, param in piece.named_parameters():
            torch.testing.assert_close(param, expected[piece.prefix + name], rtol=0, atol=0)


def test_the_loss_scores_only_labels_other_than_minus_100():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    masked = labels.clone()
    masked[0, :3] = -100  # a prompt
    masked[1, 4:] = -100  # padding
    scored = masked != -100
    expected = nn.functional.cross_entropy(logits[scored], labels[scored])
    assert torch.allclose(next_token_loss(logits, masked, None), expected)
    assert torch.allclose(
        next_token_loss(logits, labels, None), nn.functional.cross_entropy(logits.view(-1, 11), labels.view(-1))
    )
    nothing = next_token_loss(logits.requires_grad_(), torch.full_like(labels, -100), None)
    nothing.backward()  # a micro-batch with nothing scored: zero, and no NaN in the gradients
    assert nothing.item() == 0.0 and not logits.grad.isnan().any()
