"""SAC hyperparameters per environment and collection budgets per profile, in one place.

:class:`SACConfig` holds the soft actor-critic settings (stable-baselines3 names) that reach
expert level on each task when trained on the ground-truth ``state``; :class:`CollectBudget`
holds what a profile spends: SAC agent steps, evaluation cadence, checkpoint cadence, the
number of fixed-seed evaluation / random-policy episodes, dataset sizes and image size.

Budgets (SB3 SAC, one update per agent step). ``cpu`` budgets are chosen from measured
learning curves (``runs/sac/cpu/<env>/seed0/eval.csv``; figures in ``docs/figures/``):

- ``walker``, 150k steps: evaluation return 588 at 40k (the medium point), 954 at 70k, 969 at
  150k (random 40). Measured twice (sessions 1 and 3), bit-identical datasets, with SB3's own
  SAC step. With `CollectorSAC` (d673b86: fused Adam, the same algorithm rounded differently)
  the run diverged: 488 at 35k (the medium point), 776 at 150k (random 40 again); its datasets
  are a new version (checksums c674552a / 853c5646 for medium-replay / medium-expert).
- ``dclaw-screw``, 100k steps: return 164 at 15k, 433 at 40k (the medium point), 682 at 65k,
  839 at 100k (random -23); the expert turns the valve counter-clockwise (the rewarded direction)
  at 0.67 rad/s, 16.8 rad per 8 s episode, random 0.0 (``scripts/dataset-report.py``). Collected
  twice with `CollectorSAC` in fp32, on two AMD EPYC generations: bit-identical (same curve,
  pixel-identical expert filmstrip; medium-expert checksum 8f7e9d3b).

Precision (``SACConfig.precision``): walker and D'Claw collect in fp32, the precision their
measured curves and datasets above were made in, so rerunning ``collect`` rebuilds exactly those
datasets (the bf16 step, 1.5-1.8x faster, rounds differently and would make new versions).
Adroit Pen and Door Open, measured first with the bf16 step, collect in bf16.
- ``sawyer-door``, 300k steps: 100k was measured and is NOT enough. Meta-World's shaped return
  rose to 2729 but the deterministic policy first opened the door at 85k-90k (success on 29 and
  49 of 125 steps) and lost it again at 95k-100k, so the final policy scored 0 = random. 300k
  measured (bf16 step, at d50fb63, 111 min on a shared core): the deterministic policy opens the
  door in every evaluation from 115k on (returns 25-33 = base steps at success; 0 at 110k) and the
  final one succeeds in all 5 evaluation episodes (return 26 vs random 0; shaped return 4397 vs
  286). Door's evaluation episodes are identical (fixed goal and reset), so success is all or
  none per evaluation; the split episodes vary through the policy's sampling noise.
- ``adroit-pen``, 300k steps, 256 x 256 networks, gamma 0.95: measured (bf16 step, at 4d8c768,
  73 min beside other jobs on an AMD EPYC; ``scripts/sac-report.py``): the deterministic policy
  first holds the pen at the goal at 150k (the medium point), 26 of the 31 evaluations from 150k on
  are above 8,000 and all ten from 255k on above 10,000; the final one 10454 (random -690). The
  *stochastic* training episodes end with the pen at the goal in 0-1% of episodes up to 130k,
  66-84% from 180k to 250k and 94-99% from 250k on; figure ``sac_adroit-pen_cpu_seed0_eval.png``.
  Why gamma 0.95: an episode is 50 agent steps, and with up to ~200 reward per agent step at the
  goal the Q values can reach 200 / (1 - gamma): 20,000 at 0.99, 4,000 at 0.95. Beside it,
  256 x 256 with learning rate 1e-4 and gamma 0.99 was at 0% of training episodes reaching the goal
  by 115k (stopped). Before it (512 x 512, gamma 0.99, at 7b6e158, 95 min on an Intel Xeon): the
  final deterministic policy reached the goal (9094) but the evaluations swung between ~10,000 and
  below random from 115k on (16 of 38 above 8,000; all of 240k-295k below 0) and the stochastic
  expert reached the goal in 11% of its episodes; figure ``sac_adroit-pen_cpu_seed0_eval_300k.png``.
  The 512 x 512 runs, all at gamma 0.99: 150k (at d50fb63) was NOT enough: the deterministic
  evaluation return (5 identical fixed-reset episodes) swings between -786 and 9428 (115k) and the
  final policy drops the pen (-786, below the uniform-random
  policy's -690; the untrained policy, which holds still, gets -44); figure
  ``sac_adroit-pen_cpu_seed0_eval_150k-unstable.png``. Its *stochastic* training episodes were
  learning, though (gymnasium-robotics' success, pen at the goal, reached at least once per
  episode): 1% of episodes up to 55k steps, 24% around 80k, 56-67% from 105k to 135k, 42% in
  the last 15k. Scaling SAC's reward by 0.05 (``SACConfig.reward_scale``, 9c6ecd9: Q near
  walker's range) learned far less: 1-7% of training episodes reached the goal up to 145k, no
  evaluation above 112 (figure ``sac_adroit-pen_cpu_seed0_eval_scale0.05.png``; stopped at
  145k). So scale 1, trained twice as long.

``paper`` uses the paper's dataset sizes (Appendix A: Walker 100K, D'Claw 180K, Adroit 1M,
Sawyer 50K transitions) and SAC budgets long enough to reach expert level (estimates, meant
for an accelerator or a long CPU run). ``smoke``: seconds (300 SAC steps with 64x64 networks,
25-step episodes, 50-transition datasets, 32 px): it exercises every code path, it does not
learn. Smoke episodes are shortened with a time limit (recorded in the dataset attributes as
``env.horizon``); everything else follows the same code path as the real profiles.

Reward definitions SAC learns from (``collectors.sac.train_reward``): the env's own reward, except for
``sawyer-door``, whose SAC learns from Meta-World's dense shaped reward while the datasets
store the sparse success reward (1 on success, else 0) as ``reward``.
"""

from __future__ import annotations

import dataclasses

from lompo_bench.errors import UserError, choice_error
from lompo_bench.profiles import check as check_profile

ENV_NAMES = ("walker", "dclaw-screw", "adroit-pen", "sawyer-door")
SAC_SPLITS = ("medium-replay", "medium-expert", "expert")
SPLITS = ("random",) + SAC_SPLITS
SPLIT_CHOICES = SPLITS + ("all",)

# Paper, Appendix A: transitions per dataset.
PAPER_DATASET_SIZE = {"walker": 100_000, "dclaw-screw": 180_000, "adroit-pen": 1_000_000, "sawyer-door": 50_000}


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Soft actor-critic settings (Haarnoja et al. 2018 defaults unless noted per env)."""

    learning_rate: float = 3e-4
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.005
    learning_starts: int = 5_000  # uniform-random warm-up actions before the first update
    train_freq: int = 1  # one gradient update per agent step
    gradient_steps: int = 1
    net_arch: tuple[int, ...] = (256, 256)
    ent_coef: str = "auto"  # learned temperature, target entropy -dim(A)
    buffer_size: int = 1_000_000  # SB3 replay buffer, capped at the run's steps (the replay log keeps everything)
    # "bf16": the gradient step's MLP bodies in bf16 autocast, Q / mean / log-std output layers and
    # losses in fp32 (collectors/sac_policy.py); "fp32": SB3's numerics. Acting is always fp32.
    precision: str = "bf16"
    # SAC learns from the training reward times this; the replay log, the evaluation returns and
    # the datasets keep the unscaled reward. 1.0 is SB3's (a multiply by 1.0 is exact).
    reward_scale: float = 1.0


# What reaches expert level on each task, from state.
SAC_CONFIGS: dict[str, SACConfig] = {
    # dm_control walker-walk, action repeat 2: the standard SAC settings reach ~950. fp32: see
    # "Precision" in the module docstring.
    "walker": SACConfig(precision="fp32"),
    # ROBEL D'Claw: ROBEL's own SAC baseline settings (256x256, lr 3e-4, gamma 0.99); fp32 as walker.
    "dclaw-screw": SACConfig(precision="fp32"),
    # Adroit pen with dense reward, fixed goal: gamma 0.95 (50-step episodes) holds the goal where
    # 0.99 swung (module docstring); SB3's 256 x 256 networks, 3-4x cheaper per update than the
    # 512 x 512 of the 0.99 runs. Reward at scale 1: 0.05 learns far less.
    "adroit-pen": SACConfig(net_arch=(256, 256), gamma=0.95),
    # Meta-World door-open on the dense shaped reward: Meta-World's SAC baselines use
    # 400x400 MLPs; gamma 0.99.
    "sawyer-door": SACConfig(net_arch=(400, 400)),
}


@dataclasses.dataclass(frozen=True)
class CollectBudget:
    """How much one profile spends on one env."""

    sac_steps: int  # SAC agent steps (one gradient update each after warm-up)
    eval_every: int  # agent steps between evaluations of the deterministic policy
    eval_episodes: int  # E: fixed-seed episodes per evaluation (the last one defines "expert")
    checkpoint_every: int  # agent steps between checkpoints (taken at the next episode start)
    random_episodes: int  # fixed-seed episodes of the uniform-random policy (reference return)
    dataset_size: int  # transitions per dataset (whole episodes, see splits.py)
    image_size: int | None  # None: the paper's image size for the env
    learning_starts: int | None = None  # overrides SACConfig.learning_starts
    net_arch: tuple[int, ...] | None = None  # overrides SACConfig.net_arch (smoke: tiny networks)
    batch_size: int | None = None  # overrides SACConfig.batch_size
    horizon: int | None = None  # shortens episodes (smoke only); None: the env's horizon
    log_chunk_rows: int = 20_000  # replay-log rows per chunk file


def _paper(env: str) -> CollectBudget:
    steps = {"walker": 500_000, "dclaw-screw": 500_000, "adroit-pen": 1_500_000, "sawyer-door": 300_000}[env]
    return CollectBudget(sac_steps=steps, eval_every=10_000, eval_episodes=10, checkpoint_every=25_000,
                         random_episodes=50, dataset_size=PAPER_DATASET_SIZE[env], image_size=None)


# Measured per env (module docstring): the SAC agent steps of the ``cpu`` profile.
CPU_SAC_STEPS = {"walker": 150_000, "dclaw-screw": 100_000, "adroit-pen": 300_000, "sawyer-door": 300_000}


def _cpu(env: str) -> CollectBudget:
    steps = CPU_SAC_STEPS[env]
    return CollectBudget(sac_steps=steps, eval_every=5_000, eval_episodes=5, checkpoint_every=10_000,
                         random_episodes=20, dataset_size=20_000, image_size=64)


def _smoke(env: str) -> CollectBudget:
    return CollectBudget(sac_steps=300, eval_every=100, eval_episodes=2, checkpoint_every=100,
                         random_episodes=2, dataset_size=50, image_size=32, learning_starts=100,
                         net_arch=(64, 64), batch_size=64, horizon=25, log_chunk_rows=60)


_BUDGETS = {"paper": _paper, "cpu": _cpu, "smoke": _smoke}


def check_env(env: str) -> str:
    if env not in ENV_NAMES:
        raise choice_error("env", env, ENV_NAMES)
    return env


def check_split(split: str) -> str:
    if split not in SPLIT_CHOICES:
        raise choice_error("split", split, SPLIT_CHOICES)
    return split


def sac_config(env: str) -> SACConfig:
    return SAC_CONFIGS[check_env(env)]


def budget(env: str, profile: str) -> CollectBudget:
    return _BUDGETS[check_profile(profile)](check_env(env))


def check_positive(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value
