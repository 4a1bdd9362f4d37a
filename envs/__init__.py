"""lompo_bench.envs"""
