"""The test and red-team harness: what tests and benchmarks drive moeforge with, never installed with it.

It sits beside `tests/` and `bench/` (both put the repository root on `sys.path`): red-team miners
and a dishonest validator (`adversary`), a whole network in one process (`inprocess`), what a
fault trial is judged by (`faults`), the profiling-overhead timer (`overhead`) and the centralised
baselines (`baselines`, full fine-tuning and LoRA through moeforge's own loop).
"""
