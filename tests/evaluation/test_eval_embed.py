"""``embed``: loader handling, eval/inference mode, restored train mode, outputs."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dml_study.evaluation import embed


class _Recorder(nn.Module):
    """A linear embedder that records the mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.dropout = nn.Dropout(0.9)
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_inference_mode_enabled(), x.requires_grad))
        return self.dropout(self.linear(x))


def _loader(n=10, batch_size=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = torch.arange(n) % 3
    return x, y, DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_embed_returns_float32_embeddings_and_int64_labels_in_order():
    x, y, loader = _loader()
    model = _Recorder()
    emb, labels = embed(model, loader, progress=False)
    assert emb.dtype == np.float32 and emb.shape == (10, 3)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, y.numpy())
    with torch.no_grad():
        expected = model.linear(x).numpy()  # dropout off: eval mode
    np.testing.assert_allclose(emb, expected, rtol=1e-6, atol=1e-6)


def test_embed_uses_eval_and_inference_mode_and_restores_train_mode():
    _, _, loader = _loader()
    model = _Recorder().train()
    embed(model, loader, progress=False)
    assert model.calls and all(c == (False, True, False) for c in model.calls)
    assert model.training is True
    model.eval()
    embed(model, loader, progress=False)
    assert model.training is False


def test_embed_restores_train_mode_when_the_model_fails():
    class Broken(_Recorder):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        embed(model, _loader()[2], progress=False)
    assert model.training is True


def test_embed_accepts_extra_items_and_dict_batches():
    x, y, _ = _loader(n=6)
    model = _Recorder()
    triples = [(x[:3], y[:3], "meta"), (x[3:], y[3:], "meta")]
    dicts = [{"images": x[:3], "labels": y[:3]}, {"images": x[3:], "labels": y[3:]}]
    a = embed(model, triples, progress=False)
    b = embed(model, dicts, progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], y.numpy())


def test_embed_amp_is_ignored_on_cpu_so_outputs_stay_full_precision():
    _, _, loader = _loader()
    model = _Recorder()
    plain, _ = embed(model, loader, progress=False)
    amp, _ = embed(model, loader, amp=True, progress=False)
    np.testing.assert_array_equal(plain, amp)


def test_embed_progress_bar_can_be_disabled(capsys):
    embed(_Recorder(), _loader()[2], progress=False)
    assert "embed" not in capsys.readouterr().err
    embed(_Recorder(), _loader()[2], progress=True)
    assert "embed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ([], "no batches"),
        ([torch.zeros(2, 6)], "(images, labels)"),
        ([{"x": torch.zeros(2, 6)}], "'images' and 'labels'"),
    ],
)
def test_embed_rejects_bad_loaders_with_a_clear_message(batches, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        embed(_Recorder(), batches, progress=False)


def test_embed_rejects_models_that_do_not_return_a_matrix():
    class Flat(nn.Module):
        def forward(self, x):
            return x.sum()

    with pytest.raises(ValueError, match=r"\(batch, dim\)"):
        embed(Flat(), _loader()[2], progress=False)
