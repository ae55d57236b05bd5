"""The MAML family: the vectorised meta-gradient equals the per-task reference, padding is inert,
and small cases agree with gradients computed by hand from plain modules."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.meta.batching import TaskBatch, pad_tasks
from pipeline.meta.config import TrainConfig
from pipeline.meta.maml import (
    GraphedMetaGradient,
    MetaObjective,
    clip_scale,
    make_inner_lrs,
    masked_bce,
    masked_mae,
    masked_mse,
    pad_batch,
)
from pipeline.meta.model import MeLU, ModelDims
from tests.meta_fixtures import synthetic_feature_set

DIMS = ModelDims(
    user_cards=(3, 5), item_cards=(4,), n_items=30, n_multi=5, text_dim=6, rating_min=1.0, rating_max=5.0
)


def make_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> MeLU:
    fs = synthetic_feature_set(n_items=DIMS.n_items)
    torch.manual_seed(seed)
    model = MeLU(DIMS, embedding_dim=4, hidden=(8, 6), user_profile=True)
    model.set_item_features(fs.item_cats, fs.item_multi, fs.item_text)
    with torch.no_grad():
        model.global_mean.fill_(3.2)
        model.item_prior.copy_(torch.linspace(-0.5, 0.5, DIMS.n_items + 1))  # every path must add it
        model.item_seen[: DIMS.n_items - 3] = True
    return model.to(dtype)


def ragged_batch(seed: int = 1) -> TaskBatch:
    """Five tasks with different support/query sizes, one of them without support ratings."""
    rng = np.random.default_rng(seed)
    sizes = [(7, 3), (2, 5), (0, 2), (11, 1), (4, 4)]
    items = [rng.choice(DIMS.n_items, s + q, replace=False) for s, q in sizes]
    ratings = [rng.integers(1, 6, s + q).astype(np.float32) for s, q in sizes]
    ids = [np.where(rng.random(len(i)) < 0.2, DIMS.n_items, i) for i in items]
    return pad_tasks(
        rng.integers(0, [3, 5], (len(sizes), 2)),
        [i[:s] for i, (s, _) in zip(items, sizes, strict=True)],
        [r[:s] for r, (s, _) in zip(ratings, sizes, strict=True)],
        [i[s:] for i, (s, _) in zip(items, sizes, strict=True)],
        [r[s:] for r, (s, _) in zip(ratings, sizes, strict=True)],
        support_ids=[d[:s] for d, (s, _) in zip(ids, sizes, strict=True)],
        query_ids=[d[s:] for d, (s, _) in zip(ids, sizes, strict=True)],
    ).to("cpu", torch.float64)


def binary_batch(seed: int = 1) -> TaskBatch:
    """The ragged batch with 0/1 labels (rating >= 4) in place of ratings; padding stays 0."""
    batch = ragged_batch(seed)
    return replace(
        batch,
        support_ratings=(batch.support_ratings >= 4).to(batch.support_ratings.dtype),
        query_ratings=(batch.query_ratings >= 4).to(batch.query_ratings.dtype),
    )


def objective(
    algorithm: str,
    adapt: str,
    inner_steps: int = 3,
    model: MeLU | None = None,
    objective: str = "regression",
    support_shrinkage: float = 3.0,
    inner_grad_clip: float = 10.0,
) -> MetaObjective:
    config = TrainConfig(
        algorithm=algorithm,
        adapt=adapt,
        inner_steps=inner_steps,
        inner_lr=0.3,
        objective=objective,
        support_shrinkage=support_shrinkage,
        inner_grad_clip=inner_grad_clip,
    )
    model = model if model is not None else make_model()
    lrs = make_inner_lrs(model, config)
    if lrs is not None:
        lrs = lrs.to(torch.float64)
        with torch.no_grad():  # distinct per-element rates, so a mix-up of rates shows
            for p in lrs.values():
                p.mul_(
                    torch.rand(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype)
                    + 0.5
                )
    return MetaObjective(model, config, lrs)


def assert_grads_close(a: list[torch.Tensor], b: list[torch.Tensor], names: list[str], rtol: float) -> None:
    for name, ga, gb in zip(names, a, b, strict=True):
        scale = max(gb.abs().max().item(), 1e-30)
        assert (ga - gb).abs().max().item() <= rtol * scale, (
            f"{name}: {(ga - gb).abs().max().item()} vs {scale}"
        )


def test_masked_losses_by_hand() -> None:
    pred = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[2.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert masked_mse(pred, target, mask).tolist() == [2.5, 0.0]  # (1 + 4) / 2; empty row → 0
    assert masked_mae(pred, target, mask).tolist() == [1.5, 0.0]
    logit = torch.tensor([[0.0, math.log(3.0), 5.0]])
    label = torch.tensor([[1.0, 0.0, 1.0]])
    # -log sigmoid(0) = log 2; -log(1 - sigmoid(log 3)) = -log(1/4) = log 4; the third entry is masked out
    assert masked_bce(logit, label, mask[:1]).item() == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_text_profile_by_hand() -> None:
    """Mean text of the interacted items minus the mean item text; none (or only unknown items): zero."""
    model = make_model()
    text, center = model.item_text, model.item_text[: DIMS.n_items].mean(0)
    items = torch.tensor([[2, 5, 7], [4, DIMS.n_items, 0], [1, 2, 3]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    got = model.profile(items, mask)
    assert torch.allclose(got[0], (text[2] + text[5]) / 2 - center)
    assert torch.allclose(got[1], text[4] - center)  # the unknown item has no text: ignored
    assert torch.equal(got[2], torch.zeros_like(got[2]))
    no_profile = MeLU(DIMS, embedding_dim=4, hidden=(8, 6)).to(torch.float64)
    assert no_profile.user_text is None and model.user_text is not None
    assert model.decision[0].in_features == no_profile.decision[0].in_features + 4


@pytest.mark.parametrize("adapt", ["decision", "all"])
def test_binary_objective_vmap_equals_loop(adapt: str) -> None:
    """Implicit feedback: BCE on logits through the same inner loop; both implementations agree."""
    obj = objective("maml", adapt, objective="binary")
    batch = binary_batch()
    names = list(obj.meta_parameters())
    g_loop, loss_loop, _ = obj.gradient(batch, 7, "loop")
    g_vmap, loss_vmap, _ = obj.gradient(batch, 7, "vmap")
    assert_grads_close(g_vmap, g_loop, names, rtol=1e-6)
    assert torch.allclose(loss_vmap, loss_loop, rtol=1e-10)
    mse_loss = objective("maml", adapt).gradient(batch, 7, "vmap")[1]
    assert not torch.allclose(loss_vmap, mse_loss)  # a different loss, not MSE under another name


def test_joint_trains_without_the_inner_loop_but_adapts_at_prediction() -> None:
    """``joint`` (the finetune baseline): the training gradient is the plain query gradient of the
    initial weights (as with zero inner steps); prediction still takes ``inner_steps`` on the support set."""
    batch = ragged_batch()
    joint = objective("joint", "decision", inner_steps=3)
    plain = objective("maml", "decision", inner_steps=0)
    maml = objective("maml", "decision", inner_steps=3)
    names = list(joint.meta_parameters())
    for impl in ("loop", "vmap"):
        assert_grads_close(
            joint.gradient(batch, 5, impl)[0], plain.gradient(batch, 5, impl)[0], names, rtol=1e-12
        )
    with torch.no_grad():
        adapted = joint.adapt_and_predict(batch)
        assert torch.allclose(adapted, maml.adapt_and_predict(batch), rtol=1e-12)
        assert not torch.allclose(adapted, plain.adapt_and_predict(batch))


@pytest.mark.parametrize(
    ("algorithm", "adapt"), list(itertools.product(["maml", "fomaml", "metasgd"], ["decision", "all"]))
)
def test_vmap_meta_gradient_equals_loop(algorithm: str, adapt: str) -> None:
    obj = objective(algorithm, adapt)
    batch = ragged_batch()
    names = list(obj.meta_parameters())
    g_loop, loss_loop, mae_loop = obj.gradient(batch, 7, "loop")
    g_vmap, loss_vmap, mae_vmap = obj.gradient(batch, 7, "vmap")
    assert_grads_close(g_vmap, g_loop, names, rtol=1e-6)
    assert torch.allclose(loss_vmap, loss_loop, rtol=1e-10) and torch.allclose(mae_vmap, mae_loop, rtol=1e-10)
    assert all(
        g.abs().max() > 0 for name, g in zip(names, g_loop, strict=True) if name.startswith("decision.")
    )
    if algorithm == "metasgd":
        assert any(n.startswith("lr.") for n in names)
        assert all(g.abs().max() > 0 for n, g in zip(names, g_loop, strict=True) if n.startswith("lr."))


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_clipped_inner_steps_vmap_equals_loop(algorithm: str) -> None:
    """With a clip below the tasks' inner gradient norms, every step is clipped, the same in both."""
    obj = objective(algorithm, "decision", inner_grad_clip=0.05)
    batch = ragged_batch()
    names = list(obj.meta_parameters())
    g_loop, loss_loop, _ = obj.gradient(batch, 7, "loop")
    g_vmap, loss_vmap, _ = obj.gradient(batch, 7, "vmap")
    assert_grads_close(g_vmap, g_loop, names, rtol=1e-6)
    assert torch.allclose(loss_vmap, loss_loop, rtol=1e-10)
    unclipped = objective(algorithm, "decision", inner_grad_clip=0.0).gradient(batch, 7, "vmap")[1]
    assert not torch.allclose(loss_vmap, unclipped)


def test_clip_scale_by_hand() -> None:
    grads = [torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64)]
    assert clip_scale(grads, 10.0).item() == 1.0  # norm 5: below the clip, unchanged
    assert clip_scale(grads, 1.0).item() == pytest.approx(0.2, rel=1e-12)
    assert clip_scale(grads, 0.0) == 1.0  # off
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(clip_scale([zero], 1.0) * zero.sum(), zero)
    assert torch.isfinite(grad).all()  # no square root at 0: finite second-order terms


def test_clipping_keeps_a_huge_inner_step_finite() -> None:
    """An inner lr that makes plain MAML blow up leaves the clipped one finite."""
    batch = ragged_batch()
    clipped, plain = (objective("maml", "decision", inner_steps=5, inner_grad_clip=c) for c in (1.0, 0.0))
    clipped.inner_lr = plain.inner_lr = 1e3
    loss_clipped, loss_plain = (o.gradient(batch, 5, "vmap")[1].item() for o in (clipped, plain))
    # clipped: 5 steps of at most 1e3 x 1 move the weights a bounded way; plain overflows float32
    assert loss_clipped < 1e8 and loss_plain > 1e80


def test_second_order_terms_are_present() -> None:
    """MAML and first-order MAML must differ (else the test above could not tell them apart)."""
    g_maml = objective("maml", "decision").gradient(ragged_batch(), 5, "vmap")[0]
    g_fo = objective("fomaml", "decision").gradient(ragged_batch(), 5, "vmap")[0]
    assert max((a - b).abs().max().item() for a, b in zip(g_maml, g_fo, strict=True)) > 1e-4


@pytest.mark.parametrize("adapt", ["decision", "all"])
def test_padding_changes_nothing(adapt: str) -> None:
    obj = objective("maml", adapt)
    batch = ragged_batch()
    rng = np.random.default_rng(3)
    t, s, q = batch.n_tasks, batch.support_items.shape[1], batch.query_items.shape[1]

    def junk(x: torch.Tensor, extra_cols: int, integer: bool) -> torch.Tensor:
        rows, cols = t + 2, x.shape[1] + extra_cols
        if integer:
            fill = torch.as_tensor(
                rng.integers(0, 3, (rows, cols))
                if x.shape[1] == 2 and extra_cols == 0
                else rng.integers(0, DIMS.n_items, (rows, cols))
            )
        else:
            fill = torch.as_tensor(rng.uniform(1, 5, (rows, cols)), dtype=x.dtype)
        fill[:t, : x.shape[1]] = x
        return fill

    def zero_mask(m: torch.Tensor, extra_cols: int) -> torch.Tensor:
        out = torch.zeros(t + 2, m.shape[1] + extra_cols, dtype=m.dtype)
        out[:t, : m.shape[1]] = m
        return out

    padded = TaskBatch(
        junk(batch.user_cats, 0, True),
        junk(batch.support_items, 4, True),
        junk(batch.support_ids, 4, True),
        junk(batch.support_ratings, 4, False),
        zero_mask(batch.support_mask, 4),
        junk(batch.query_items, 3, True),
        junk(batch.query_ids, 3, True),
        junk(batch.query_ratings, 3, False),
        zero_mask(batch.query_mask, 3),
    )
    assert padded.support_items.shape == (t + 2, s + 4) and padded.query_items.shape == (t + 2, q + 3)
    g_plain, loss_plain, _ = obj.gradient(batch, 5, "vmap")
    g_padded, loss_padded, _ = obj.gradient(padded, 5, "vmap")
    assert_grads_close(g_padded, g_plain, list(obj.meta_parameters()), rtol=1e-12)
    assert torch.allclose(loss_padded, loss_plain, rtol=1e-12)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd"])
def test_zero_inner_steps_is_the_plain_query_gradient(algorithm: str) -> None:
    obj = objective(algorithm, "decision", inner_steps=0)
    batch = ragged_batch()
    model = obj.model
    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.n_tasks):
        s, q = int(batch.support_mask[t].sum()), int(batch.query_mask[t].sum())
        prof = model.profile(batch.support_items[t, :s], batch.support_mask[t, :s])
        pred = model(batch.user_cats[t], batch.query_items[t, :q], batch.query_ids[t, :q], prof)
        total = total + ((pred - batch.query_ratings[t, :q]) ** 2).mean()
    expected = torch.autograd.grad(total / batch.n_tasks, list(model.parameters()))
    for impl in ("loop", "vmap"):
        grads = obj.gradient(batch, batch.n_tasks, impl)[0]
        names = list(obj.meta_parameters())
        model_grads = [g for n, g in zip(names, grads, strict=True) if not n.startswith("lr.")]
        assert_grads_close(model_grads, list(expected), [n for n in names if not n.startswith("lr.")], 1e-10)
        assert all(g.abs().max() == 0 for n, g in zip(names, grads, strict=True) if n.startswith("lr."))


def test_first_order_all_params_is_the_query_gradient_at_the_adapted_weights() -> None:
    """FOMAML adapting everything: the meta-gradient is ∇ query-loss at the fast weights, found here by
    running plain SGD on a copy of the module for each task."""
    inner_steps, lr, shrinkage = 2, 0.3, 3.0
    obj = objective("fomaml", "all", inner_steps=inner_steps, support_shrinkage=shrinkage)
    batch = ragged_batch()
    expected = [torch.zeros_like(p) for p in obj.model.parameters()]
    for t in range(batch.n_tasks):
        s, q = int(batch.support_mask[t].sum()), int(batch.query_mask[t].sum())
        clone = copy.deepcopy(obj.model)
        prof = clone.profile(batch.support_items[t, :s], batch.support_mask[t, :s])
        for _ in range(inner_steps):
            clone.zero_grad()
            pred = clone(batch.user_cats[t], batch.support_items[t, :s], batch.support_ids[t, :s], prof)
            if s:
                (((pred - batch.support_ratings[t, :s]) ** 2).sum() / (s + shrinkage)).backward()
                with torch.no_grad():
                    for p in clone.parameters():
                        p -= lr * p.grad
        pred = clone(batch.user_cats[t], batch.query_items[t, :q], batch.query_ids[t, :q], prof)
        for acc, g in zip(
            expected,
            torch.autograd.grad(((pred - batch.query_ratings[t, :q]) ** 2).mean(), list(clone.parameters())),
            strict=True,
        ):
            acc += g / batch.n_tasks
    for impl in ("loop", "vmap"):
        grads = obj.gradient(batch, batch.n_tasks, impl)[0]
        assert_grads_close(grads, expected, list(obj.meta_parameters()), 1e-10)


@pytest.mark.parametrize("shrinkage", [0.0, 4.0])
def test_meta_objective_value_matches_one_hand_sgd_step(shrinkage: float) -> None:
    """Second-order MAML, one step on the decision MLP: the objective is the query loss at w - lr * grad,
    the support loss being the squared error summed over the s support ratings / (s + shrinkage)."""
    obj = objective("maml", "decision", inner_steps=1, support_shrinkage=shrinkage)
    batch = ragged_batch()
    out = obj.vmap(batch, batch.n_tasks)
    losses = []
    for t in range(batch.n_tasks):
        s, q = int(batch.support_mask[t].sum()), int(batch.query_mask[t].sum())
        clone = copy.deepcopy(obj.model)
        prof = clone.profile(batch.support_items[t, :s], batch.support_mask[t, :s])
        pred = clone(batch.user_cats[t], batch.support_items[t, :s], batch.support_ids[t, :s], prof)
        if s:
            (((pred - batch.support_ratings[t, :s]) ** 2).sum() / (s + shrinkage)).backward()
            with torch.no_grad():
                for p in clone.decision.parameters():
                    p -= 0.3 * p.grad
        pred = clone(batch.user_cats[t], batch.query_items[t, :q], batch.query_ids[t, :q], prof)
        losses.append(((pred - batch.query_ratings[t, :q]) ** 2).mean().item())
    assert out.objective.item() == pytest.approx(np.mean(losses), rel=1e-12)


def test_empty_shard_gives_zero_gradient() -> None:
    obj = objective("maml", "decision")
    batch = ragged_batch()
    empty = TaskBatch(*(getattr(batch, f)[:0] for f in TaskBatch.__dataclass_fields__))
    grads, loss, mae = obj.gradient(empty, 5, "vmap")
    assert all(g.abs().sum() == 0 for g in grads) and loss == 0 and mae == 0
    static = pad_batch(empty, 3, 12, 6)  # what the CUDA graph replays for an empty shard
    out = obj.vmap(static, torch.tensor(5.0, dtype=torch.float64))
    params = list(obj.meta_parameters().values())
    grads = torch.autograd.grad(out.objective, params, materialize_grads=True)
    assert all(g.abs().sum() == 0 for g in grads) and out.loss_sum == 0 and out.mae_sum == 0


def test_unknown_items_use_the_unknown_id_row() -> None:
    model = make_model()
    seen, unseen = torch.tensor([0]), torch.tensor([DIMS.n_items - 1])
    assert model.id_rows(seen).item() == 0 and model.id_rows(unseen).item() == DIMS.n_items
    uc = torch.tensor([1, 2])
    default = model(uc, unseen)
    explicit = model(uc, unseen, torch.tensor([DIMS.n_items]))
    assert torch.equal(default, explicit)
    assert not torch.equal(default, model(uc, unseen, unseen))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="algorithm='reptile'"):
        TrainConfig(algorithm="reptile")
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainConfig.from_dict({"inner_lr": 0.1, "inner_lrr": 0.2})
    assert TrainConfig.from_dict({"hidden": [8, 4]}).hidden == (8, 4)
    assert replace(TrainConfig(), algorithm="fomaml").second_order is False


def test_static_shapes_of_the_cuda_graph_change_nothing() -> None:
    """The graph replays the vmap step on zero-padded static buffers with the task count as a tensor."""
    obj = objective("metasgd", "decision")
    batch = ragged_batch()
    static = pad_batch(
        batch, batch.n_tasks + 3, batch.support_items.shape[1] + 5, batch.query_items.shape[1] + 2
    )
    plain = obj.vmap(batch, 7)
    padded = obj.vmap(static, torch.tensor(7.0, dtype=torch.float64))
    params = list(obj.meta_parameters().values())
    g_plain = torch.autograd.grad(plain.objective, params)
    g_padded = torch.autograd.grad(padded.objective, params)
    assert_grads_close(list(g_padded), list(g_plain), list(obj.meta_parameters()), rtol=1e-12)
    assert torch.allclose(padded.mae_sum, plain.mae_sum, rtol=1e-12)
    with pytest.raises(ValueError, match="exceeds the static shape"):
        pad_batch(batch, batch.n_tasks - 1, 50, 50)


def test_graph_implementation_needs_cuda() -> None:
    obj = objective("maml", "decision")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        GraphedMetaGradient(obj, 4, 8, 4, torch.device("cpu"), n_fields=2)
