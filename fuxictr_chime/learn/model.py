"""The LEARN compression baseline (Jia et al. 2024, arXiv 2405.03988), as the CHIME paper runs it.

Spec section 4: frozen item content vectors (the same multimodal vectors CHIME's IAM gets) ->
linear projection -> causal transformer user tower (the IRM backbone class of CHIME, random
init) -> 64-d user embedding per position; an item tower maps the content vectors to the same
64-d space. Each user's representation-set sequence of positive behaviors is split by position
into a history part and a later target part (the last ``target_fraction``); the dense
all-action loss (:func:`~.losses.dense_all_action_loss`) scores every history position against
every target item of the same user, each against the target items of the other users.

The user tower reads the user's *positive* behaviors only (LEARN models what users engaged
with; its inputs carry no action label). Exported feature ``learn_emb``: the L2-normalized
64-d user embedding at one position of the representation set's positives (zeros for users
without one), chosen by ``learn.export_position``:

* ``last_anchor`` (default): the last history position, the latest position whose vector the
  dense all-action loss trains (it scores it against the user's target part);
* ``last_valid``: the last positive, the spec's wording (section 4). It lies in the target part,
  so training never scores the vector there against anything: the exported vector comes from a
  position the loss never saw as an anchor (issue 14; docs/ARCHITECTURE.md section 5.3).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..compressor.backbone import InterestBackbone, optimizer_groups
from ..errors import ConfigError
from .losses import dense_all_action_loss

__all__ = ["LEARNCompressor", "compact_positives"]


def compact_positives(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each user's positive behaviors to the front (order kept), right padded.

    Returns ``(order (B, T) int64, mask (B, T) bool)``: gather index into the time axis and
    the validity mask of the compacted sequence.
    """
    valid = batch["mask"].bool() if "mask" in batch else batch["labels"] != 0  # (B, T)
    positive = valid & (batch["labels"] > 0)  # (B, T)
    order = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)  # (B, T) positives first
    mask = torch.gather(positive, 1, order)  # (B, T)
    return order, mask


class LEARNCompressor(nn.Module):
    """LEARN user tower + item tower. Build with :meth:`from_config` (compressor registry protocol)."""

    loss_names = ("dense_all_action",)
    monitor = "dense_all_action"

    def __init__(self, config: Any, vocab_sizes: Mapping[str, int], dense_widths: Mapping[str, int]):
        super().__init__()
        self.config = config
        spec = config.learn
        columns = list(spec.content_columns) if spec.content_columns else sorted(dense_widths)
        if not columns:
            raise ConfigError("LEARN needs item content vectors, but the dataset has no dense item column "
                              "(item_info.parquet); prepare it with its side vectors (e.g. without --no-text)")
        unknown = [c for c in columns if c not in dense_widths]
        if unknown:
            raise ConfigError(f"learn.content_columns: {unknown} not in the dataset's dense columns "
                              f"{sorted(dense_widths)}")
        self.content_columns = columns
        content_dim = sum(int(dense_widths[c]) for c in columns)
        hidden = config.backbone.hidden_size
        self.user_projection = nn.Linear(content_dim, hidden)
        self.backbone = InterestBackbone(config.backbone)
        self.user_head = nn.Linear(hidden, spec.output_dim)
        self.item_tower = nn.Sequential(nn.Linear(content_dim, spec.item_hidden), nn.GELU(),
                                        nn.Linear(spec.item_hidden, spec.output_dim))

    @classmethod
    def from_config(cls, config: Any, vocab_sizes: Mapping[str, int],
                    dense_widths: Mapping[str, int]) -> "LEARNCompressor":
        return cls(config, vocab_sizes, dense_widths)

    @property
    def feature_dim(self) -> int:
        return self.config.learn.output_dim

    def _content(self, batch: Mapping[str, Any], order: torch.Tensor) -> torch.Tensor:
        """Frozen content vectors of the compacted sequence, (B, T, C)."""
        parts = [batch["dense"][c].float() for c in self.content_columns]  # each (B, T, d)
        content = torch.cat(parts, dim=-1)  # (B, T, C)
        index = order.unsqueeze(-1).expand(-1, -1, content.shape[-1])  # (B, T, C)
        return torch.gather(content, 1, index).detach()

    def _towers(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        order, mask = compact_positives(batch)
        content = self._content(batch, order)  # (B, T, C)
        hidden = self.backbone(self.user_projection(content), mask)  # (B, T, H)
        u = F.normalize(self.user_head(hidden.float()), dim=-1)  # (B, T, 64)
        v = F.normalize(self.item_tower(content), dim=-1)  # (B, T, 64)
        return u, v, mask

    def split(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(history (B, T), target (B, T), n_history (B,))`` of the compacted positives ``mask``:
        the last ``floor(target_fraction * n)`` (at least 1) of a user's n positives are the target
        part, the rest the history part (the loss's anchors); a user with one positive has neither."""
        length = mask.sum(1, keepdim=True)  # (B, 1) positives per user
        n_target = torch.floor(length.float() * self.config.learn.target_fraction).long().clamp_min(1)  # (B, 1)
        position = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)  # (1, T)
        history = mask & (position < length - n_target)  # (B, T)
        target = mask & (position >= length - n_target) & (length >= 2)  # (B, T)
        return history, target, history.sum(1)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Named losses ``{"loss", "dense_all_action"}``."""
        spec = self.config.learn
        u, v, mask = self._towers(batch)
        history, target, _ = self.split(mask)
        loss = dense_all_action_loss(u, v, history, target, tau=spec.tau, chunk_size=spec.chunk_size)
        return {"loss": loss, "dense_all_action": float(loss.detach())}

    def param_groups(self, optim: Any) -> list[dict]:
        """One AdamW group at ``optim.lr_new`` (plus ``lr_pretrained`` for a pretrained user tower)."""
        return optimizer_groups(self, optim)

    def user_states(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position user embeddings (B, T, 64) over the compacted positives and their mask
        (B, T) bool: the user vectors of the collapse diagnostics (:mod:`..compressor.diagnostics`)."""
        u, _, mask = self._towers(batch)
        return u, mask

    def export_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,) index into the compacted positives of the exported vector (``learn.export_position``):
        ``last_anchor`` = the last history position (position 0 for a user with one positive, whom
        the loss skips), ``last_valid`` = the last positive."""
        if self.config.learn.export_position == "last_valid":
            return (mask.sum(1) - 1).clamp_min(0)
        return (self.split(mask)[2] - 1).clamp_min(0)

    def user_features(self, batch: Mapping[str, Any], normalize: bool = True) -> torch.Tensor:
        """``learn_emb`` (B, 64): the user embedding at :meth:`export_positions`; zeros for a user
        without a positive behavior.

        ``normalize`` is accepted for the export protocol; the embedding is always L2-normalized."""
        u, _, mask = self._towers(batch)
        last = self.export_positions(mask)  # (B,)
        emb = u[torch.arange(u.shape[0], device=u.device), last]  # (B, 64)
        return emb * mask.any(1, keepdim=True).to(emb.dtype)
