"""lompo_bench.collectors: the datasets of the paper's protocol (Appendix A, after D4RL).

``lompo-bench collect ENV --split {random,medium-replay,medium-expert,expert,all}
[--profile smoke|cpu|paper] [--seed S] [--out PATH_OR_DIR] [--image-size N] [--episodes N]
[--overwrite]`` (``cli.py``). One soft actor-critic run per (env, seed, profile), trained
on the ground-truth state, serves the three SAC splits; it is trained once, checkpointed
and resumable, and reused by every later ``collect``.

Modules (read in this order):

- ``config``: SAC hyperparameters per env, budgets and dataset sizes per profile.
- ``sac``: the run: training, evaluation curve, recorded replay log, checkpoints/resume.
- ``reference``: random and expert reference returns (normalized-score anchors).
- ``splits``: the split protocol (medium point, which episodes go where, sizes).
- ``collect``: writing the SAC splits as dataset stores (frames rendered from physics).
- ``random_policy``: the ``random`` split.
- ``rerender``: ``lompo-bench datasets rerender PATH --image-size N``.

Nothing heavy is imported here, so ``lompo-bench --help`` stays fast.
"""
