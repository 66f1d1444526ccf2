"""The lab: benchmarks, a small language model per variant, and the report."""
