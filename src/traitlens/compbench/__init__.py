"""CompBench: comparative-reasoning evaluation of multimodal models, and building such benchmarks."""
