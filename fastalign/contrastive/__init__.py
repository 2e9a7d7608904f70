"""Contrastive losses: InfoNCE / CLIP over very large negative sets."""

from fastalign.contrastive.api import InfoNCELoss, infonce_loss

__all__ = ["InfoNCELoss", "infonce_loss"]
