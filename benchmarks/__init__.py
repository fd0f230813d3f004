"""Throughput and memory benchmarks (``make bench``). See benchmarks/README.md."""
