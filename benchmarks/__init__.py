"""trapvisor's benchmarks, run by `trapvisor bench` (benchmarks.suite): exit cost by kind,
Adams & Agesen's nanobenchmarks, CPU-bound overhead, monolithic against micro, peers and
Unicorn's loads against stores, and scale. Never part of the test run (pytest collects tests/).
"""
