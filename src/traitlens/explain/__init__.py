"""Explanations: a batched CAM engine, Finer-CAM, and faithfulness and trait-localisation metrics."""
