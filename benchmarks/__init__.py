"""exca_lite benchmarks: ``python benchmarks/run.py [--quick] [--only NAME,...]`` (see BENCHMARKS.md)."""
