"""lompo_bench.collectors"""
