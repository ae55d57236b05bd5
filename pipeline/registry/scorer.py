"""The serving scorer: adapt the decision MLP to one user's support set, then score the candidates.

It computes what :meth:`MetaLearner.adapt_predict` computes (a test holds the two to 1e-5), organised
for one request at a time. When only the decision MLP adapts (``train.adapt: decision``, MeLU's choice),
the item side of the MLP input does not depend on the user, so it is computed once at load; a request
then costs the inner loop on its few support rows (gradients written out by hand: autograd's
bookkeeping would cost more than the arithmetic) and one pass of the MLP over the candidates, whose
first layer is split into a user part (one vector) and an item part (one matrix product).

Compression applies to that candidate pass, the bulk of the work: ``int8`` runs each adapted linear
layer through torch's dynamic quantisation kernels (weights int8 per output channel, activations
quantised on the fly); the inner loop always runs in float, since it needs gradients. With
``train.adapt: all`` the embeddings adapt too: nothing can be cached or compressed, and the scorer
delegates to ``adapt_predict``, one request at a time.

Requests may arrive on several threads at once (the MLflow server runs ``predict`` in a thread pool):
fast weights live in local variables only.

A score that is not finite (NaN weights, or an adaptation that diverged) is never returned: ``scores``
raises :class:`NonFiniteScores` instead.

:class:`FoldInScorer` serves the meta-learned fold-in (``train.model: foldin``): the item side (biases
and factors) is computed once at load, and a request costs one ridge solve of ``factors + 1`` unknowns
(:meth:`FoldInLearner.adapt_heads`, the solve training and evaluation use) and one matrix-vector product.
:func:`make_scorer` picks the scorer of a learner.
"""

from __future__ import annotations

import threading
import warnings
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.meta.foldin import FoldInLearner
from pipeline.meta.learner import MetaLearner
from pipeline.meta.learners import Learner
from pipeline.meta.maml import clip_scale, lr_key
from pipeline.meta.model import DECISION_PREFIX

Compression = Literal["none", "int8"]
COMPRESSIONS: tuple[str, ...] = ("none", "int8")

Layers = list[tuple[Tensor, Tensor]]
"""(weight, bias) of each linear layer of the decision MLP."""


def _int8_linear(x: Tensor, weight: Tensor, bias: Tensor, relu: bool) -> Tensor:
    """``x`` through a dynamically quantised linear layer (per-channel symmetric int8 weights, as
    ``quantize_dynamic`` with ``per_channel_dynamic_qconfig`` builds it) made from an adapted weight."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks its quantised tensors deprecated; 2.x still ships them
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zeros = torch.zeros_like(scales, dtype=torch.long)
        qweight = torch.quantize_per_channel(weight.contiguous(), scales, zeros, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, bias.contiguous())
    op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
    return op(x, packed, True)  # reduce_range, as fbgemm's dynamic linear layers run


class NonFiniteScores(RuntimeError):
    """The model scored a candidate NaN or infinite: its weights, or this user's adaptation, diverged."""


def _finite(scores: np.ndarray, n_support: int) -> np.ndarray:
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise NonFiniteScores(
            f"the model scored {bad} of {scores.size} candidates NaN or infinite after adapting to "
            f"{n_support} support ratings: its weights or this adaptation diverged"
        )
    return scores


class Scorer:
    """Scores one user's candidates after adapting to the user's ratings; ``compression`` as in
    ``register.compression``."""

    def __init__(self, learner: MetaLearner, compression: Compression = "none") -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        self.learner = learner
        self.compression = compression
        self.cached = learner.config.adapt == "decision"
        self._lock = threading.Lock()
        if compression != "none" and not self.cached:
            raise ValueError(
                f"compression {compression!r} needs train.adapt=decision (with 'all' the embeddings adapt "
                "per user, so the candidate pass cannot be precomputed or compressed)"
            )
        if not self.cached:
            return
        model = learner.model
        modules = list(model.decision)
        if not all(isinstance(m, nn.Linear | nn.ReLU) for m in modules):
            raise ValueError("the decision MLP must be made of Linear and ReLU layers")
        linear = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
        params = {k: v.detach() for k, v in model.decision.named_parameters()}

        def rate(name: str) -> Tensor | float:
            if learner.inner_lrs is None:
                return learner.config.inner_lr
            return learner.inner_lrs[lr_key(DECISION_PREFIX + name)].detach()

        self._model = model
        self._n_user = sum(cast(nn.Embedding, e).embedding_dim for e in model.user_embeddings)
        if model.user_text is not None:
            self._n_user += model.user_text.out_features
        self._relu = [i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU) for i in linear]
        self._base: Layers = [(params[f"{i}.weight"], params[f"{i}.bias"]) for i in linear]
        self._rates = [(rate(f"{i}.weight"), rate(f"{i}.bias")) for i in linear]
        with torch.no_grad():
            items = torch.arange(model.dims.n_items, device=learner.device)
            no_user = torch.zeros((1, len(model.dims.user_cards)), dtype=torch.long, device=learner.device)
            features = model.features(no_user, items[None], model.id_rows(items)[None])[0]
            self._items = features[:, self._n_user :].contiguous()
            self._offsets = model.offset(model.id_rows(items))

    def scores(
        self,
        user_cats: np.ndarray,
        support_items: np.ndarray,
        support_ratings: np.ndarray,
        query_items: np.ndarray | None,
        clip: bool = True,
        context_items: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predicted ratings of ``query_items``, or of every item when None; clipped to the rating range
        unless ``clip`` is False (ranking then still tells apart items predicted above the top rating;
        ``adapt_predict``, behind ``train.adapt: all``, always clips).

        ``user_cats`` [Fu] are the user's attribute codes, item indices are FeatureSet rows;
        ``context_items`` were interacted with but not rated (they join the user's text profile).
        Raises :class:`NonFiniteScores` rather than return a NaN or infinite score.
        """
        if not self.cached:
            query = np.arange(self.learner.model.dims.n_items) if query_items is None else query_items
            with self._lock:  # adapt_predict swaps fast weights into the shared model
                [out] = self.learner.adapt_predict(
                    user_cats[None],
                    [support_items],
                    [support_ratings],
                    [query],
                    None if context_items is None else [context_items],
                )
            return _finite(out, len(support_items))
        dims = self._model.dims
        with torch.no_grad():
            interacted = (
                support_items if context_items is None else np.concatenate([support_items, context_items])
            )
            user = self._user_vector(torch.as_tensor(user_cats, device=self.learner.device), interacted)
            layers = self._adapt(user, support_items, support_ratings)
            device = self.learner.device
            rows = slice(None) if query_items is None else torch.as_tensor(query_items, device=device)
            pred = (
                self._forward(layers, user, self._items[rows], self.compression == "int8")
                + self._offsets[rows]
            )
            pred = pred.clamp(dims.rating_min, dims.rating_max) if clip else pred
            return _finite(pred.float().cpu().numpy(), len(support_items))

    def _user_vector(self, user_cats: Tensor, interacted: np.ndarray) -> Tensor:
        """The user part of the MLP input: attribute embeddings, then the text profile if there is one."""
        profile = None
        if self._model.user_text is not None:
            items = torch.as_tensor(np.asarray(interacted, np.int64), device=self.learner.device)
            profile = self._model.profile(
                items, torch.ones(items.shape, dtype=self._items.dtype, device=items.device)
            )
        return self._model.user_features(user_cats, profile)

    def _adapt(self, user: Tensor, support_items: np.ndarray, ratings: np.ndarray) -> Layers:
        """``inner_steps`` SGD steps of the support loss over the decision MLP (none without support): the
        squared error summed over the n support rows, divided by ``n + support_shrinkage``, each step's
        gradient clipped to norm ``inner_grad_clip``.

        The gradient of this small ReLU MLP is written out (backpropagation by hand): on a few support
        rows autograd's bookkeeping would cost more than the arithmetic.
        """
        layers = list(self._base)
        if not len(support_items):
            return layers
        rows = torch.as_tensor(support_items, device=self.learner.device)
        items = self._items[rows]
        y = torch.as_tensor(ratings, dtype=items.dtype, device=items.device) - self._offsets[rows]
        denominator = max(1.0, y.numel() + self.learner.config.support_shrinkage)
        for _ in range(self.learner.config.inner_steps):
            trace: list[Tensor] = []
            pred = self._forward(layers, user, items, compressed=False, trace=trace)
            grad = (2.0 / denominator) * (pred - y)[:, None]  # d loss / d out (y net of the offsets)
            grads: Layers = []
            for n in reversed(range(len(layers))):
                if self._relu[n]:
                    grad = grad * (trace[n + 1] > 0)
                weight_grad, bias_grad = grad.T @ trace[n], grad.sum(0)
                if n == 0:
                    weight_grad = torch.cat([torch.outer(bias_grad, user), weight_grad], dim=1)
                else:
                    grad = grad @ layers[n][0]
                grads.insert(0, (weight_grad, bias_grad))
            scale = clip_scale([g for pair in grads for g in pair], self.learner.config.inner_grad_clip)
            layers = [
                (w - rw * (scale * gw), b - rb * (scale * gb))
                for (w, b), (rw, rb), (gw, gb) in zip(layers, self._rates, grads, strict=True)
            ]
        return layers

    def _forward(
        self, layers: Layers, user: Tensor, items: Tensor, compressed: bool, trace: list[Tensor] | None = None
    ) -> Tensor:
        """The decision MLP with weights ``layers`` over ``items`` [N, D_item] (without the rating offset).

        The first layer's user columns fold into its bias. The weights are passed, never swapped into the
        shared module (as ``functional_call`` does), so concurrent requests cannot see each other's.
        ``trace`` collects each layer's input and the last output, for the backward pass.
        """
        h = items
        for n, ((weight, bias), relu) in enumerate(zip(layers, self._relu, strict=True)):
            if n == 0:
                bias = bias + weight[:, : self._n_user] @ user
                weight = weight[:, self._n_user :]
            if trace is not None:
                trace.append(h)
            if compressed:
                h = _int8_linear(h, weight, bias, relu)
            else:
                h = torch.nn.functional.linear(h, weight, bias)
                h = torch.relu(h) if relu else h
        if trace is not None:
            trace.append(h)
        return h.squeeze(-1)


class FoldInScorer:
    """Scores one user's candidates with the fold-in: the heads solved on the user's ratings, the item side
    cached."""

    def __init__(self, learner: FoldInLearner) -> None:
        self.learner = learner
        self.ranks = learner.ranks
        with torch.no_grad():
            self._side = learner.tower()

    def _rows(self, query_items: np.ndarray | None) -> slice | Tensor:
        if query_items is None:
            return slice(0, self.learner.dims.n_items)
        return torch.as_tensor(query_items, device=self.learner.device)

    def scores(
        self,
        user_cats: np.ndarray,
        support_items: np.ndarray,
        support_ratings: np.ndarray,
        query_items: np.ndarray | None,
        clip: bool = True,
        context_items: np.ndarray | None = None,
    ) -> np.ndarray:
        """As :meth:`Scorer.scores`; ``context_items`` are not used (the fold-in learns from ratings only)."""
        device, dims, side = self.learner.device, self.learner.dims, self._side
        with torch.no_grad():
            items = torch.as_tensor(np.asarray(support_items, np.int64), device=device)[None]
            ratings = torch.as_tensor(np.asarray(support_ratings, np.float32), device=device)[None]
            cats = torch.as_tensor(np.asarray(user_cats, np.int64), device=device)[None]
            head = self.learner.adapt_heads(side, cats, items, ratings, torch.ones_like(ratings))[0]
            rows = self._rows(query_items)
            pred = self.learner.tower.mean + side.bias[rows] + side.x[rows] @ head
            pred = pred.clamp(dims.rating_min, dims.rating_max) if clip else pred
            return _finite(pred.float().cpu().numpy(), len(support_items))

    def ranking(self, support_items: np.ndarray, query_items: np.ndarray | None) -> np.ndarray:
        """The ranking head's scores of ``query_items`` (every item when None) for a user who rated
        ``support_items``: higher ranks first."""
        device, side = self.learner.device, self._side
        with torch.no_grad():
            items = torch.as_tensor(np.asarray(support_items, np.int64), device=device)[None]
            state = self.learner.rank_states(side, items, torch.ones(items.shape, device=device))[0]
            rows = self._rows(query_items)
            score = side.rank_bias[rows] + side.rank_x[rows] @ state
            return _finite(score.float().cpu().numpy(), len(support_items))


def make_scorer(learner: Learner, compression: Compression = "none") -> Scorer | FoldInScorer:
    """The serving scorer of ``learner``; ``compression`` (``register.compression``) applies to MeLU's MLP."""
    if isinstance(learner, MetaLearner):
        return Scorer(learner, compression)
    if compression != "none":
        raise ValueError(
            f"register.compression {compression!r} quantises MeLU's decision MLP (train.model melu); "
            "the fold-in (train.model foldin) serves in float: set register.compression none"
        )
    return FoldInScorer(learner)
