"""Models that explain themselves: Prompt-CAM and INTR (and the plain classifier heads)."""

from traitlens.models.head_blur import TraitHeads
from traitlens.models.intr import INTR, load_detr
from traitlens.models.prompt_cam import HierarchicalPromptCAM, PromptCAM

__all__ = ["PromptCAM", "HierarchicalPromptCAM", "INTR", "load_detr", "TraitHeads"]
