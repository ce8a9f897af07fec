"""Trait segmentation by tracking: propagate one specimen's trait masks to a whole collection."""
