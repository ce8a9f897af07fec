"""Data: the trait-annotated synthetic collection, readers for real collections, image loading, transforms."""
