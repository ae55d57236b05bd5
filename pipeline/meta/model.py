"""The MeLU-style rating model: embeddings of user and item attributes → decision MLP → rating.

Item attributes (categorical codes, multi-hot genres, frozen language-model text embedding) are buffers,
so a saved model scores any known item by its index alone. Row ``n_items`` of every item table is the
"unknown item": no attributes, and the id embedding used for items the model never trained on.

The prediction starts from an offset: the global mean plus the item's prior, its shrunk mean residual
over the training ratings (``sum(r - mean) / (count + item_prior)``; 0 for items without ratings and
for ids hidden by item dropout, which stand for new items), set when training starts. The MLP and
the user's adaptation then learn what the biases miss.

With ``user_profile`` the user side also holds a text profile: the mean text embedding of the items the
user interacted with (the support set, plus items clicked without a rating), centred on the mean item
text, so a user with none gets the average profile. It lets text inform a user with no ratings at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

DECISION_PREFIX = "decision."


@dataclass(frozen=True)
class ModelDims:
    """Shapes of the inputs, read from a FeatureSet; saved with the model so it can be rebuilt."""

    user_cards: tuple[int, ...]
    item_cards: tuple[int, ...]
    n_items: int
    n_multi: int
    text_dim: int
    rating_min: float
    rating_max: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelDims:
        return cls(**{**d, "user_cards": tuple(d["user_cards"]), "item_cards": tuple(d["item_cards"])})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["user_cards"], out["item_cards"] = list(self.user_cards), list(self.item_cards)
        return out


def check_adapt_inputs(
    dims: ModelDims,
    user_cats: np.ndarray,
    support_items: Sequence[np.ndarray],
    support_ratings: Sequence[np.ndarray],
    query_items: Sequence[np.ndarray],
    context_items: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``user_cats`` as int64 codes, after checking an adaptation request's shapes and ranges against
    ``dims``: a ValueError names the user, column or rating that breaks a rule."""
    uc = np.asarray(user_cats, dtype=np.int64)
    n_fields = len(dims.user_cards)
    if uc.ndim != 2 or uc.shape[1] != n_fields:
        raise ValueError(f"user_cats: expected shape [n_users, {n_fields}], got {list(uc.shape)}")
    if not len(support_items) == len(support_ratings) == len(query_items) == uc.shape[0]:
        raise ValueError(
            f"adapt_predict: {uc.shape[0]} users in user_cats, {len(support_items)} support item lists, "
            f"{len(support_ratings)} support rating lists, {len(query_items)} query item lists"
        )
    for f, card in enumerate(dims.user_cards):
        bad = np.flatnonzero((uc[:, f] < 0) | (uc[:, f] >= card))
        if bad.size:
            raise ValueError(f"user_cats row {bad[0]}, column {f}: code {uc[bad[0], f]} outside [0, {card})")
    if context_items is not None and len(context_items) != uc.shape[0]:
        raise ValueError(f"adapt_predict: {uc.shape[0]} users but {len(context_items)} context item lists")
    lists_by_name = {"support_items": support_items, "query_items": query_items}
    if context_items is not None:
        lists_by_name["context_items"] = context_items
    for name, lists in lists_by_name.items():
        for u, items in enumerate(lists):
            items = np.asarray(items)
            if items.size and (items.min() < 0 or items.max() > dims.n_items):
                raise ValueError(f"{name}[{u}]: item index outside [0, {dims.n_items}] (n_items = unknown)")
    for u, (items, ratings) in enumerate(zip(support_items, support_ratings, strict=True)):
        if len(items) != len(ratings):
            raise ValueError(f"user {u}: {len(items)} support items but {len(ratings)} support ratings")
        ratings = np.asarray(ratings, dtype=np.float64)
        bad = np.flatnonzero(~((ratings >= dims.rating_min) & (ratings <= dims.rating_max)))
        if bad.size:
            raise ValueError(
                f"support_ratings[{u}]: rating {ratings[bad[0]]} outside "
                f"[{dims.rating_min}, {dims.rating_max}]"
            )
    return uc


class MeLU(nn.Module):
    """Rating = global mean + MLP([user field embeddings, item id, item fields, genres, text projection])."""

    item_cats: Tensor
    item_multi: Tensor
    item_text: Tensor
    item_seen: Tensor
    global_mean: Tensor
    item_prior: Tensor
    text_center: Tensor

    def __init__(
        self,
        dims: ModelDims,
        embedding_dim: int,
        hidden: tuple[int, ...],
        frozen_text: bool = False,
        user_profile: bool = False,
    ) -> None:
        """``frozen_text``: keep the text projections at their seeded random initialisation (never
        trained); ``user_profile``: add the user's text profile to the user side (needs item text)."""
        super().__init__()
        self.dims = dims
        e = embedding_dim
        self.user_embeddings = nn.ModuleList(nn.Embedding(card, e) for card in dims.user_cards)
        self.item_id = nn.Embedding(dims.n_items + 1, e)
        self.item_embeddings = nn.ModuleList(nn.Embedding(card, e) for card in dims.item_cards)
        self.genre = nn.Linear(dims.n_multi, e, bias=False) if dims.n_multi else None
        self.text = nn.Linear(dims.text_dim, e) if dims.text_dim else None
        self.user_text = nn.Linear(dims.text_dim, e) if dims.text_dim and user_profile else None
        for projection in (self.text, self.user_text):
            if projection is not None and frozen_text:
                projection.requires_grad_(False)
        for emb in [*self.user_embeddings, self.item_id, *self.item_embeddings]:
            nn.init.normal_(emb.weight, std=0.01)  # rows that are rarely updated stay near the average
        n_parts = (
            len(dims.user_cards)
            + (self.user_text is not None)
            + 1
            + len(dims.item_cards)
            + (self.genre is not None)
            + (self.text is not None)
        )
        layers: list[nn.Module] = []
        width = n_parts * e
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.decision = nn.Sequential(*layers)

        n = dims.n_items + 1
        self.register_buffer("item_cats", torch.zeros(n, len(dims.item_cards), dtype=torch.long))
        self.register_buffer("item_multi", torch.zeros(n, dims.n_multi))
        self.register_buffer("item_text", torch.zeros(n, dims.text_dim))
        self.register_buffer("item_seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("global_mean", torch.zeros(()))
        self.register_buffer("item_prior", torch.zeros(n))
        self.register_buffer("text_center", torch.zeros(dims.text_dim))

    @property
    def unknown_item(self) -> int:
        return self.dims.n_items

    def set_item_features(self, item_cats: np.ndarray, item_multi: np.ndarray, item_text: np.ndarray) -> None:
        """Copy the FeatureSet item tables into the buffers (the unknown row stays empty)."""
        n = self.dims.n_items
        with torch.no_grad():
            self.item_cats[:n] = torch.tensor(item_cats, dtype=torch.long)
            self.item_multi[:n] = torch.tensor(item_multi, dtype=self.item_multi.dtype)
            self.item_text[:n] = torch.tensor(item_text, dtype=self.item_text.dtype)
            if n:
                self.text_center.copy_(self.item_text[:n].mean(0))

    def id_rows(self, items: Tensor) -> Tensor:
        """Row of the id table per item: its own if trained on, else the unknown item's."""
        return torch.where(self.item_seen[items], items, torch.full_like(items, self.unknown_item))

    def profile(self, items: Tensor, mask: Tensor) -> Tensor:
        """Text profile [..., D] of users who interacted with ``items`` [..., S] where ``mask`` is 1: their
        mean text embedding minus the mean item text (0 for a user with none; unknown items ignored)."""
        mask = mask * (items != self.unknown_item).to(mask.dtype)
        total = (self.item_text[items] * mask.unsqueeze(-1)).sum(-2)
        count = mask.sum(-1, keepdim=True)
        return torch.where(
            count > 0, total / count.clamp(min=1.0) - self.text_center, torch.zeros_like(total)
        )

    def user_features(self, user_cats: Tensor, profile: Tensor | None = None) -> Tensor:
        """User part of the MLP input [..., Fu·E (+E with a text profile)] (empty without user fields).

        ``profile`` [..., D] from :meth:`profile`; None: the average user (a zero profile).
        """
        parts = [emb(user_cats[..., f]) for f, emb in enumerate(self.user_embeddings)]
        if self.user_text is not None:
            if profile is None:
                profile = self.text_center.new_zeros((*user_cats.shape[:-1], self.dims.text_dim))
            parts.append(self.user_text(profile))
        if not parts:
            return user_cats.new_zeros((*user_cats.shape[:-1], 0), dtype=self.item_text.dtype)
        return torch.cat(parts, dim=-1)

    def item_features(self, items: Tensor, id_rows: Tensor) -> Tensor:
        """Item part of the MLP input [..., S, D_item]."""
        parts = [self.item_id(id_rows)]
        cats = self.item_cats[items]
        parts += [emb(cats[..., f]) for f, emb in enumerate(self.item_embeddings)]
        if self.genre is not None:
            multi = self.item_multi[items]
            parts.append(self.genre(multi) / multi.sum(-1, keepdim=True).clamp(min=1.0))
        if self.text is not None:
            parts.append(self.text(self.item_text[items]))
        return torch.cat(parts, dim=-1)

    def features(
        self, user_cats: Tensor, items: Tensor, id_rows: Tensor, profile: Tensor | None = None
    ) -> Tensor:
        """Input of the decision MLP for ``items`` [..., S] of a user with codes ``user_cats`` [..., Fu]."""
        user = self.user_features(user_cats, profile)
        user = user.unsqueeze(-2).expand(*items.shape, user.shape[-1])
        return torch.cat([user, self.item_features(items, id_rows)], dim=-1)

    def offset(self, id_rows: Tensor) -> Tensor:
        """Where the prediction starts: the global mean plus the prior of the item's id row (the unknown
        row, for new items and ids hidden by item dropout, has none)."""
        return self.global_mean + self.item_prior[id_rows]

    def decide(self, x: Tensor, id_rows: Tensor) -> Tensor:
        return self.decision(x).squeeze(-1) + self.offset(id_rows)

    def forward(
        self,
        user_cats: Tensor,
        items: Tensor,
        id_rows: Tensor | None = None,
        profile: Tensor | None = None,
    ) -> Tensor:
        """Predicted ratings [..., S] (unclipped); ``profile`` as in :meth:`user_features`."""
        rows = self.id_rows(items) if id_rows is None else id_rows
        return self.decide(self.features(user_cats, items, rows, profile), rows)

    def adapted_names(self, adapt: str) -> list[str]:
        """Parameters updated in the inner loop: the decision MLP (MeLU), or everything trainable."""
        names = [n for n, p in self.named_parameters() if p.requires_grad]
        return names if adapt == "all" else [n for n in names if n.startswith(DECISION_PREFIX)]
