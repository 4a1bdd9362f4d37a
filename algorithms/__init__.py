"""lompo_bench.algorithms"""
