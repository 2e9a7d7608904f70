"""Contrastive losses: InfoNCE / CLIP over large negative sets; ReAlnet's correlation-contrastive loss."""

from fastalign.contrastive.api import InfoNCELoss, infonce_loss
from fastalign.contrastive.correlation import correlation_contrastive_loss

__all__ = ["InfoNCELoss", "correlation_contrastive_loss", "infonce_loss"]
