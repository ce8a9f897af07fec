"""Models that explain themselves: Prompt-CAM and INTR (and the plain classifier heads)."""

from traitlens.models.prompt_cam import HierarchicalPromptCAM, PromptCAM

__all__ = ["PromptCAM", "HierarchicalPromptCAM"]
