"""lompo_bench.leaderboard"""
