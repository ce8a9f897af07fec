"""Models that explain themselves: Prompt-CAM and INTR (and the plain classifier heads)."""
