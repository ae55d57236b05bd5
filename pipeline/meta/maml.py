"""MAML, first-order MAML and Meta-SGD over a meta-batch of users, three ways with the same math.

Per task: ``inner_steps`` SGD steps of the masked support loss over the adapted parameters (the decision
MLP, or everything; each step's gradient clipped to norm ``inner_grad_clip``), then the masked query
loss with the adapted parameters: MSE on ratings, or binary cross-entropy on 0/1 labels (objective
``binary``). The meta-objective is the sum of the query losses
divided by the global number of tasks in the meta-batch, so summing it over ranks gives the mean over the
global batch. Algorithm ``joint`` trains without the inner loop (plain supervised learning of the same
model, the ``finetune`` baseline) and adapts only at prediction.

- ``loop``: one task at a time with ``torch.autograd.grad``: the reference.
- ``vmap``: ``torch.func`` over the padded batch in one call; when only the decision MLP adapts, the
  embedding features are computed once for the batch outside the vectorised inner loop.
- ``graph`` (CUDA only): the ``vmap`` meta-gradient captured in a CUDA graph and replayed on static
  buffers, so a meta-step launches one graph instead of thousands of kernels.

Fast weights are plain tensors computed from the meta-parameters, never copied into a module, so the
meta-gradient flows through the inner loop (second order unless ``fomaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from pipeline.meta.batching import TaskBatch
from pipeline.meta.config import TrainConfig
from pipeline.meta.model import DECISION_PREFIX, MeLU

Params = dict[str, Tensor]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the entries where ``mask`` is 1 (0 for an all-padding row)."""
    return (mask * (pred - target) ** 2).sum(-1) / mask.sum(-1).clamp(min=1.0)


def masked_mae(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return (mask * (pred - target).abs()).sum(-1) / mask.sum(-1).clamp(min=1.0)


def masked_bce(logit: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean binary cross-entropy (from logits, 0/1 targets) over the entries where ``mask`` is 1."""
    loss = nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="none")
    return (mask * loss).sum(-1) / mask.sum(-1).clamp(min=1.0)


def clip_scale(grads: list[Tensor], max_norm: float) -> Tensor | float:
    """Factor that brings the joint norm of ``grads`` down to ``max_norm`` (1 below it; 1 when 0: off).

    ``max_norm / sqrt(max(|g|², max_norm²))``: differentiable (no square root at 0) and exactly 1 below
    the threshold, so clipping changes nothing for a gradient that is small enough.
    """
    if max_norm <= 0:
        return 1.0
    sq = sum((g * g).sum() for g in grads)
    return max_norm * torch.rsqrt(torch.clamp(torch.as_tensor(sq), min=max_norm * max_norm))


def lr_key(name: str) -> str:
    """Name of the Meta-SGD learning-rate tensor of parameter ``name`` (dots are not allowed in keys)."""
    return name.replace(".", "__")


def make_inner_lrs(model: MeLU, config: TrainConfig) -> nn.ParameterDict | None:
    """Meta-SGD's learned per-parameter inner learning rates, initialised to ``inner_lr``; None otherwise."""
    if config.algorithm != "metasgd":
        return None
    params = dict(model.named_parameters())
    return nn.ParameterDict(
        {
            lr_key(n): nn.Parameter(torch.full_like(params[n], config.inner_lr))
            for n in model.adapted_names(config.adapt)
        }
    )


@dataclass(frozen=True)
class StepOutput:
    """``objective`` is differentiable; the sums over the local tasks are detached, for logging."""

    objective: Tensor
    loss_sum: Tensor
    mae_sum: Tensor


class MetaObjective:
    """The meta-objective of a model under one algorithm and adaptation choice."""

    def __init__(self, model: MeLU, config: TrainConfig, inner_lrs: nn.ParameterDict | None) -> None:
        self.model = model
        self.adapt = config.adapt
        self.inner_steps = config.inner_steps
        self.train_inner_steps = config.train_inner_steps
        self.binary = config.objective == "binary"
        self.task_loss = masked_bce if self.binary else masked_mse
        self.support_shrinkage = config.support_shrinkage
        self.inner_grad_clip = config.inner_grad_clip
        self.second_order = config.second_order
        self.adapted = model.adapted_names(config.adapt)
        self.inner_lrs = inner_lrs
        self.inner_lr = config.inner_lr
        self.bf16 = config.bf16

    def meta_parameters(self) -> Params:
        """Everything the outer loop learns: trainable model parameters, then Meta-SGD's ``lr.*`` tensors."""
        out: Params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if self.inner_lrs is not None:
            out.update({f"lr.{k}": v for k, v in self.inner_lrs.items()})
        return out

    def autocast(self, device: torch.device) -> AbstractContextManager[object]:
        if self.bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def score(self, pred: Tensor) -> Tensor:
        """Model output → the predicted rating (regression) or probability (binary)."""
        return torch.sigmoid(pred) if self.binary else pred

    def support_loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The inner loop's loss: the task loss summed over the n support entries and divided by
        ``n + support_shrinkage`` (the mean when it is 0), so a user's few ratings move the weights less
        than many, as pseudo-ratings shrink a bias."""
        n = mask.sum(-1)
        scale = n.clamp(min=1.0) / (n + self.support_shrinkage).clamp(min=1.0)
        return self.task_loss(pred, target, mask) * scale

    def _lr(self, name: str) -> Tensor | float:
        return self.inner_lr if self.inner_lrs is None else self.inner_lrs[lr_key(name)]

    def _sgd(self, fast: Params, grads: Params, names: dict[str, str]) -> Params:
        """One inner SGD step, the task's gradient clipped to norm ``inner_grad_clip``; ``names`` maps the
        keys of ``fast`` to full parameter names."""
        if not self.second_order:
            grads = {k: g.detach() for k, g in grads.items()}
        scale = clip_scale([grads[k] for k in fast], self.inner_grad_clip)
        return {k: fast[k] - self._lr(names[k]) * (scale * grads[k]) for k in fast}

    # -- reference: one task at a time ------------------------------------------------------------

    def loop(self, batch: TaskBatch, n_global: int) -> StepOutput:
        """Per-task Python loop over the un-padded tasks of ``batch``; full forward at every step."""
        params: Params = dict(self.model.named_parameters())
        identity = {n: n for n in self.adapted}
        losses, maes = [], []
        n_support = batch.support_mask.sum(1).long().tolist()
        n_query = batch.query_mask.sum(1).long().tolist()
        for t in range(batch.n_tasks):
            s, q = n_support[t], n_query[t]
            uc = batch.user_cats[t]
            profile = self.model.profile(batch.support_items[t, :s], batch.support_mask[t, :s])
            fast = {n: params[n] for n in self.adapted}
            for _ in range(self.train_inner_steps if s else 0):  # no support: nothing to adapt
                pred = functional_call(
                    self.model, fast, (uc, batch.support_items[t, :s], batch.support_ids[t, :s], profile)
                )
                loss = self.support_loss(pred, batch.support_ratings[t, :s], batch.support_mask[t, :s])
                grads = torch.autograd.grad(
                    loss, fast, create_graph=self.second_order, materialize_grads=True
                )
                fast = self._sgd(fast, grads, identity)
            pred = functional_call(
                self.model, fast, (uc, batch.query_items[t, :q], batch.query_ids[t, :q], profile)
            )
            losses.append(self.task_loss(pred, batch.query_ratings[t, :q], batch.query_mask[t, :q]))
            scored = self.score(pred.detach())
            maes.append(masked_mae(scored, batch.query_ratings[t, :q], batch.query_mask[t, :q]))
        if not losses:
            zero = batch.support_ratings.new_zeros(())
            return StepOutput(zero, zero, zero)
        loss_vec, mae_vec = torch.stack(losses), torch.stack(maes)
        return StepOutput(loss_vec.sum() / n_global, loss_vec.detach().sum(), mae_vec.sum())

    # -- vectorised: the whole meta-batch in one call --------------------------------------------

    def vmap(self, batch: TaskBatch, n_global: int | Tensor) -> StepOutput:
        """The same objective with ``torch.func.vmap`` over the padded tasks."""
        losses, preds = self._vmapped(batch, with_loss=True)
        mae = masked_mae(self.score(preds.detach()), batch.query_ratings, batch.query_mask)
        return StepOutput(losses.sum() / n_global, losses.detach().sum(), mae.sum())

    def adapt_and_predict(self, batch: TaskBatch, profile: Tensor | None = None) -> Tensor:
        """Adapt on each task's support set and predict its query items [T, Q] (no meta-gradient).

        ``profile`` [T, D]: the users' text profiles (default: from their support items). Returns raw
        model outputs (logits for ``binary``); adaptation always takes ``inner_steps``.
        """
        return self._vmapped(batch, with_loss=False, profile=profile)[1]

    def _vmapped(
        self, batch: TaskBatch, with_loss: bool, profile: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        params: Params = dict(self.model.named_parameters())
        if profile is None:
            profile = self.model.profile(batch.support_items, batch.support_mask)
        if self.adapt == "decision":
            names = {n[len(DECISION_PREFIX) :]: n for n in self.adapted}
            fast0 = {k: params[n] for k, n in names.items()}
            xu = self.model.user_features(batch.user_cats, profile)
            xs = self.model.item_features(batch.support_items, batch.support_ids)
            xq = self.model.item_features(batch.query_items, batch.query_ids)

            off_s = self.model.offset(batch.support_ids)  # a hidden id (item dropout) has no prior
            off_q = self.model.offset(batch.query_ids)

            def predict_s(fast: Params, t: tuple[Tensor, ...]) -> Tensor:
                return self._decide(fast, t[0], t[1]) + t[3]

            def predict_q(fast: Params, t: tuple[Tensor, ...]) -> Tensor:
                return self._decide(fast, t[0], t[2]) + t[4]

            per_task: tuple[Tensor, ...] = (xu, xs, xq, off_s, off_q)
        else:
            names = {n: n for n in self.adapted}
            fast0 = {n: params[n] for n in self.adapted}

            def predict_s(fast: Params, t: tuple[Tensor, ...]) -> Tensor:
                return functional_call(self.model, fast, (t[0], t[1], t[2], t[5]))

            def predict_q(fast: Params, t: tuple[Tensor, ...]) -> Tensor:
                return functional_call(self.model, fast, (t[0], t[3], t[4], t[5]))

            per_task = (
                batch.user_cats,
                batch.support_items,
                batch.support_ids,
                batch.query_items,
                batch.query_ids,
                profile,
            )

        steps = self.train_inner_steps if with_loss else self.inner_steps

        def task(
            t: tuple[Tensor, ...], ys: Tensor, ms: Tensor, yq: Tensor, mq: Tensor
        ) -> tuple[Tensor, Tensor]:
            def support_loss(f: Params) -> Tensor:
                return self.support_loss(predict_s(f, t), ys, ms)

            fast = self._adapt_vmapped(fast0, names, support_loss, steps)
            pred = predict_q(fast, t)
            loss = self.task_loss(pred, yq, mq) if with_loss else pred.new_zeros(())
            return loss, pred

        return torch.vmap(task)(
            per_task, batch.support_ratings, batch.support_mask, batch.query_ratings, batch.query_mask
        )

    def _adapt_vmapped(
        self, fast: Params, names: dict[str, str], support_loss: Callable[[Params], Tensor], steps: int
    ) -> Params:
        for _ in range(steps):
            fast = self._sgd(fast, torch.func.grad(support_loss)(fast), names)
        return fast

    def _decide(self, fast: Params, user: Tensor, items: Tensor) -> Tensor:
        """The decision MLP with weights ``fast`` on [user, item] inputs without materialising the concat.

        The user's share of the first layer is computed once per task, not once per item: the same
        function as the module's, with less work for the inner loop.
        """
        h: Tensor | None = None
        for k, layer in enumerate(self.model.decision):
            if not isinstance(layer, nn.Linear):
                h = layer(h)
                continue
            w, b = fast[f"{k}.weight"], fast[f"{k}.bias"]
            if h is None:
                du = user.shape[-1]
                h = items @ w[:, du:].T + (user @ w[:, :du].T).unsqueeze(-2) + b
            else:
                h = h @ w.T + b
        assert h is not None
        return h.squeeze(-1)

    # -- meta-gradient ----------------------------------------------------------------------------

    def gradient(self, batch: TaskBatch, n_global: int, impl: str) -> tuple[list[Tensor], Tensor, Tensor]:
        """(meta-gradient per meta-parameter, summed query loss, summed query MAE) of the local tasks."""
        params = list(self.meta_parameters().values())
        if batch.n_tasks == 0:
            zero = batch.support_ratings.new_zeros(())
            return [torch.zeros_like(p) for p in params], zero, zero
        with self.autocast(batch.support_ratings.device):
            out = self.loop(batch, n_global) if impl == "loop" else self.vmap(batch, n_global)
        grads = torch.autograd.grad(out.objective, params, materialize_grads=True)
        return list(grads), out.loss_sum, out.mae_sum


def pad_batch(batch: TaskBatch, n_tasks: int, support: int, query: int) -> TaskBatch:
    """Zero-pad ``batch`` to exactly [n_tasks, support] / [n_tasks, query]; padded tasks have empty masks."""
    if (
        batch.n_tasks > n_tasks
        or batch.support_items.shape[1] > support
        or batch.query_items.shape[1] > query
    ):
        raise ValueError(
            f"batch of {batch.n_tasks} tasks, support {batch.support_items.shape[1]}, query "
            f"{batch.query_items.shape[1]} exceeds the static shape ({n_tasks}, {support}, {query})"
        )

    def grow(t: Tensor, width: int | None) -> Tensor:
        out = t.new_zeros((n_tasks, *t.shape[1:]) if width is None else (n_tasks, width))
        out[: t.shape[0], : t.shape[1]] = t
        return out

    return TaskBatch(
        grow(batch.user_cats, None),
        *(
            grow(t, support)
            for t in (batch.support_items, batch.support_ids, batch.support_ratings, batch.support_mask)
        ),
        *(
            grow(t, query)
            for t in (batch.query_items, batch.query_ids, batch.query_ratings, batch.query_mask)
        ),
    )


class GraphedMetaGradient:
    """The ``vmap`` meta-gradient captured once in a CUDA graph, replayed on static input buffers.

    Shapes are fixed at capture (tasks per rank, ``max_support``, ``query_size``): smaller batches are
    zero-padded, which changes nothing. Nothing in the captured step synchronises with the host; the
    outputs are static tensors, overwritten by the next call.
    """

    def __init__(
        self,
        objective: MetaObjective,
        n_tasks: int,
        support: int,
        query: int,
        device: torch.device,
        n_fields: int,
        warmup: int = 3,
    ) -> None:
        if device.type != "cuda":
            raise RuntimeError("the graph implementation needs a CUDA device; use impl 'vmap' on CPU")
        self.objective = objective
        self.shape = (n_tasks, support, query)
        dtype = next(objective.model.parameters()).dtype
        self.static = TaskBatch(
            torch.zeros(n_tasks, n_fields, dtype=torch.long, device=device),
            *(
                torch.zeros(n_tasks, support, dtype=d, device=device)
                for d in (torch.long, torch.long, dtype, dtype)
            ),
            *(
                torch.zeros(n_tasks, query, dtype=d, device=device)
                for d in (torch.long, torch.long, dtype, dtype)
            ),
        )
        self.n_global = torch.ones((), dtype=dtype, device=device)
        self.params = list(objective.meta_parameters().values())
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._compute()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._compute()

    def _compute(self) -> tuple[list[Tensor], Tensor, Tensor]:
        with self.objective.autocast(self.n_global.device):
            out = self.objective.vmap(self.static, self.n_global)
        grads = torch.autograd.grad(out.objective, self.params, materialize_grads=True)
        return list(grads), out.loss_sum, out.mae_sum

    def __call__(self, batch: TaskBatch, n_global: int) -> tuple[list[Tensor], Tensor, Tensor]:
        padded = pad_batch(batch, *self.shape)
        for name in TaskBatch.__dataclass_fields__:
            getattr(self.static, name).copy_(getattr(padded, name), non_blocking=True)
        self.n_global.fill_(n_global)
        self.graph.replay()
        return self.outputs
