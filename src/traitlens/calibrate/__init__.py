"""Calibrated fine-tuning: restore classes absent from fine-tuning with one logit bias."""
