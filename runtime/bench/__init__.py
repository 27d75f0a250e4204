"""`heapd bench`: the workloads of BENCHMARKS.md against a fresh local cell."""
