"""A meta-learned fold-in: matrix factorisation whose user side is a closed-form ridge solve on the
support set, trained end to end on the query loss (the R2-D2 idea of Bertinetto et al., ICLR 2019, on
ratings).

The item tower gives every item a bias and ``factors`` factors: an id embedding (its id row, or the
unknown row for an item without training ratings and, with probability ``item_dropout`` per training
step, for a trained one) plus a content part, an MLP of the item's centred text embedding and genres
plus its categorical attributes' embeddings. A user's head ``w_u = [b_u, p_u]`` is the ridge solution

    w_u = (XᵀX + Λ)⁻¹ (Xᵀ y + Λ m_u),   X = [1, h_i] over the support items, y = r - μ - b_i,

with a learned per-dimension precision ``Λ`` and a learned prior mean ``m_u`` (a global vector plus
embeddings of the user's categorical attributes), so a user without ratings scores at its prior. The
prediction is ``μ + b_i + [1, h_i]·w_u``. Training draws, per user and step, a random support set of 1
to ``max_support`` of the user's training ratings and scores the solve on up to ``max_query`` others:
the gradient of the query error flows through the solve into the item tower, Λ and the prior. At
predict a known user is solved from its training rows plus its new support rows (all its evidence, as
``mf_foldin``); a new user from its support rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.baselines.base import Objective, check_objective, check_rows, clip_to_scale, unseen_support
from pipeline.baselines.mf_foldin import ridge_terms
from pipeline.features.store import FeatureSet


def _with_unknown_row(a: np.ndarray) -> np.ndarray:
    """``a`` with a zero row appended: the unknown item's attributes."""
    return np.vstack([a, np.zeros((1, a.shape[1]), a.dtype)])


class ItemTower(nn.Module):
    """Bias and factors of items, and the users' prior heads; row ``n_items`` is the unknown item."""

    text: Tensor
    genres: Tensor
    cats: Tensor
    user_cats: Tensor

    def __init__(self, fs: FeatureSet, factors: int, hidden: int, init_precision: float) -> None:
        super().__init__()
        text = fs.item_text - fs.item_text.mean(0) if fs.n_items else fs.item_text
        genres = fs.item_multi / np.maximum(fs.item_multi.sum(1, keepdims=True), 1)
        self.register_buffer("text", torch.tensor(_with_unknown_row(text), dtype=torch.float32))
        self.register_buffer("genres", torch.tensor(_with_unknown_row(genres), dtype=torch.float32))
        self.register_buffer("cats", torch.tensor(_with_unknown_row(fs.item_cats), dtype=torch.long))
        self.register_buffer("user_cats", torch.tensor(fs.user_cats, dtype=torch.long))
        d = factors + 1
        self.id = nn.Embedding(fs.n_items + 1, d)
        self.content = nn.Sequential(
            nn.Linear(fs.text_dim + fs.n_multi, hidden), nn.ReLU(), nn.Linear(hidden, d)
        )
        self.item_fields = nn.ModuleList(nn.Embedding(c, d) for c in fs.item_cards)
        self.user_fields = nn.ModuleList(nn.Embedding(c, d) for c in fs.user_cards)
        for emb in [self.id, *self.item_fields, *self.user_fields]:
            nn.init.normal_(emb.weight, std=0.01)
        self.prior = nn.Parameter(torch.zeros(d))
        self.log_precision = nn.Parameter(torch.full((d,), float(np.log(init_precision))))

    def forward(self, items: Tensor, id_rows: Tensor) -> tuple[Tensor, Tensor]:
        """Bias [...] and factors [..., k] of ``items``, with the id embedding of ``id_rows``."""
        out = self.id(id_rows) + self.content(torch.cat([self.text[items], self.genres[items]], -1))
        for f, emb in enumerate(self.item_fields):
            out = out + emb(self.cats[items, f])
        return out[..., 0], out[..., 1:]

    def user_prior(self, users: Tensor) -> Tensor:
        """Prior head ``m_u`` [..., k + 1] of ``users``."""
        out = self.prior.expand(*users.shape, -1)
        for f, emb in enumerate(self.user_fields):
            out = out + emb(self.user_cats[users, f])
        return out


def ridge_heads(x: Tensor, y: Tensor, mask: Tensor, prior: Tensor, precision: Tensor) -> Tensor:
    """Per task, ``(XᵀX + diag(precision))⁻¹ (Xᵀy + precision · prior)`` over the rows where ``mask`` is 1:
    ``x`` [B, S, d], ``y`` and ``mask`` [B, S], ``prior`` [B, d], ``precision`` [d] → [B, d]."""
    xm = x * mask.unsqueeze(-1)
    gram = xm.transpose(1, 2) @ x + torch.diag_embed(precision.expand_as(prior))
    rhs = (xm * y.unsqueeze(-1)).sum(1) + precision * prior
    return torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)


class MetaFoldIn:
    """An item tower meta-trained so that a ridge fold-in from a few ratings predicts the user's others."""

    name = "meta_foldin"
    seeded = True

    def __init__(
        self,
        objective: Objective = "regression",
        factors: int = 32,
        hidden: int = 128,
        epochs: int = 30,
        batch: int = 128,
        learning_rate: float = 3e-3,
        item_dropout: float = 0.5,
        max_support: int = 100,
        max_query: int = 100,
        init_precision: float = 5.0,
        seed: int = 0,
    ) -> None:
        if min(factors, hidden, epochs, batch, max_support, max_query) < 1:
            raise ValueError("factors, hidden, epochs, batch, max_support and max_query must be >= 1")
        if learning_rate <= 0 or init_precision <= 0 or not 0 <= item_dropout < 1:
            raise ValueError("learning_rate and init_precision must be > 0, item_dropout in [0, 1)")
        self.objective = check_objective(objective)
        self.predicts_ratings = objective == "regression"
        self.factors, self.hidden, self.epochs, self.batch = factors, hidden, epochs, batch
        self.learning_rate, self.item_dropout = learning_rate, item_dropout
        self.max_support, self.max_query = max_support, max_query
        self.init_precision, self.seed = init_precision, seed
        self.mean = 0.0
        self.tower: ItemTower | None = None
        self.seen = np.zeros(0, dtype=bool)
        self.train: dict[str, np.ndarray] = {}

    def _tasks(
        self, rng: np.random.Generator, starts: np.ndarray, counts: np.ndarray, rows: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, ...]:
        """Padded support and query (item, rating, mask) arrays of one batch of users."""
        b, s, q = starts.size, self.max_support, self.max_query
        unknown = self.seen.size - 1
        si, qi = np.full((b, s), unknown), np.full((b, q), unknown)
        sr, sm, qr, qm = np.zeros((b, s)), np.zeros((b, s)), np.zeros((b, q)), np.zeros((b, q))
        for t, (start, n) in enumerate(zip(starts, counts, strict=True)):
            order = start + rng.permutation(n)
            ns = int(rng.integers(1, min(n - 1, s) + 1))
            nq = min(n - ns, q)
            si[t, :ns], sr[t, :ns], sm[t, :ns] = rows["item_index"][order[:ns]], rows["rating"][order[:ns]], 1
            query = order[ns : ns + nq]
            qi[t, :nq], qr[t, :nq], qm[t, :nq] = rows["item_index"][query], rows["rating"][query], 1
        return si, sr, sm, qi, qr, qm

    def fit(self, fs: FeatureSet, train: dict[str, np.ndarray]) -> None:
        rows = check_rows(fs, train, "train", self.objective)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.mean = float(rows["rating"].mean())
        self.seen = np.zeros(fs.n_items + 1, dtype=bool)
        self.seen[rows["item_index"]] = True
        self.train = rows
        tower = ItemTower(fs, self.factors, self.hidden, self.init_precision)
        order = np.argsort(rows["user_index"], kind="stable")
        by_user = {c: v[order] for c, v in rows.items()}
        users, starts, counts = np.unique(by_user["user_index"], return_index=True, return_counts=True)
        keep = counts >= 2
        users, starts, counts = users[keep], starts[keep], counts[keep]
        batches = max(1, int(np.ceil(users.size / self.batch)))
        optimizer = torch.optim.Adam(tower.parameters(), lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.learning_rate, total_steps=self.epochs * batches, pct_start=0.1
        )
        seen = torch.tensor(self.seen)
        items = torch.arange(fs.n_items + 1)
        for _ in range(self.epochs):
            perm = rng.permutation(users.size)
            for b in range(batches):
                pick = perm[b * self.batch : (b + 1) * self.batch]
                if pick.size == 0:
                    continue
                si, sr, sm, qi, qr, qm = (
                    torch.tensor(a) for a in self._tasks(rng, starts[pick], counts[pick], by_user)
                )
                kept = seen & (torch.rand(fs.n_items + 1) >= self.item_dropout)
                id_rows = torch.where(kept, items, fs.n_items)
                loss = self._query_loss(tower, torch.tensor(users[pick]), si, sr, sm, qi, qr, qm, id_rows)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        tower.eval()
        self.tower = tower

    def _query_loss(
        self,
        tower: ItemTower,
        users: Tensor,
        si: Tensor,
        sr: Tensor,
        sm: Tensor,
        qi: Tensor,
        qr: Tensor,
        qm: Tensor,
        id_rows: Tensor,
    ) -> Tensor:
        """Mean squared query error of the batch's heads solved on its supports; item ``i`` takes the id
        embedding of row ``id_rows[i]`` (the unknown row when it is not seen or dropped this step)."""
        bias, factors = tower(torch.arange(id_rows.numel()), id_rows)  # every item once, then gathered
        x = torch.cat([torch.ones_like(bias).unsqueeze(-1), factors], -1)
        y = sr.float() - self.mean - bias[si]
        heads = ridge_heads(x[si], y, sm.float(), tower.user_prior(users), tower.log_precision.exp())
        pred = self.mean + bias[qi] + (x[qi] * heads.unsqueeze(1)).sum(-1)
        mask = qm.float()
        return ((pred - qr.float()) ** 2 * mask).sum() / mask.sum().clamp(min=1.0)

    @torch.no_grad()
    def predict(
        self, fs: FeatureSet, support: dict[str, np.ndarray], query: dict[str, np.ndarray]
    ) -> np.ndarray:
        if self.tower is None:
            raise RuntimeError("MetaFoldIn used before fit")
        s = check_rows(fs, support, "support", self.objective)
        s = {c: v[unseen_support(fs, self.train, s)] for c, v in s.items()}
        q = check_rows(fs, query, "query")
        users = np.unique(q["user_index"])
        known = np.isin(self.train["user_index"], users)
        u = np.r_[self.train["user_index"][known], s["user_index"]]
        i = np.r_[self.train["item_index"][known], s["item_index"]]
        r = np.r_[self.train["rating"][known], s["rating"]]
        items = torch.arange(fs.n_items + 1)
        id_rows = torch.where(torch.tensor(self.seen), items, torch.tensor(fs.n_items))
        bias, factors = self.tower(items, id_rows)
        b, h = bias.double().numpy(), factors.double().numpy()
        precision = self.tower.log_precision.exp().double().numpy()
        prior = self.tower.user_prior(torch.arange(fs.n_users)).double().numpy()
        heads = ridge_terms(u, i, r - self.mean - b[i], fs.n_users, h, precision, prior)
        qu, qi = q["user_index"], q["item_index"]
        z = self.mean + b[qi] + heads[qu, 0] + np.einsum("nk,nk->n", heads[qu, 1:], h[qi])
        return clip_to_scale(fs, z) if self.objective == "regression" else np.clip(z, 0.0, 1.0)
