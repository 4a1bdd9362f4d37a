#!/usr/bin/env python
"""Split statistics of collected datasets, and an expert filmstrip: the figures a collection is reported with.

    python scripts/dataset-report.py ~/.lompo-bench/datasets/cpu/sawyer-door/*.zarr \
        --filmstrip docs/figures/sawyer-door_cpu_expert_filmstrip.png

Prints one markdown row per store: episodes, transitions, mean / std / min / median / max
episode return, and where the task defines it the success rate (Door Open: an episode succeeds
when its sparse reward is ever 1). For D'Claw Screw it adds the valve's mean angular velocity
(rad/s, + = the rewarded counter-clockwise direction) and the angle turned per episode (rad),
both read from the recorded ground-truth ``state``. For Adroit Pen it adds gymnasium-robotics'
success criterion (pen within 7.5 cm of the goal position and orientation similarity > 0.95),
computed from ``state`` at the end of each agent step: the share of episodes that end with the
pen at the goal, and the mean share of steps spent there. ``--filmstrip`` draws evenly spaced frames
of the first episode of the ``expert`` store given: exactly the pixels the agent is trained on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lompo_bench.store import Dataset

# envs/dclaw.py: state = joint pos (9), joint vel (9), cos, sin of the valve angle, valve angular velocity, ...
DCLAW_COS, DCLAW_SIN, DCLAW_OMEGA = 18, 19, 20
# gymnasium-robotics' AdroitHandPen observation (envs/adroit.py `state`): hand qpos (24), pen
# position (3), pen velocity (6), pen orientation (3), goal orientation (3), position - goal (3), ...
PEN_ORIEN, GOAL_ORIEN, PEN_TO_GOAL = slice(33, 36), slice(36, 39), slice(39, 42)


def pen_at_goal(state: np.ndarray) -> np.ndarray:
    """gymnasium-robotics' AdroitHandPen `success` per row: distance < 0.075 and similarity > 0.95."""
    distance = np.linalg.norm(state[:, PEN_TO_GOAL], axis=1)
    similarity = (state[:, PEN_ORIEN] * state[:, GOAL_ORIEN]).sum(1)
    return (distance < 0.075) & (similarity > 0.95)


def episode_stats(ds: Dataset) -> dict:
    returns, successes, omegas, turned, at_goal = [], [], [], [], []
    keys = ["reward"] + (["state"] if ds.env in ("dclaw-screw", "adroit-pen") else [])
    for e in range(ds.num_episodes):
        ep = ds.episode(e, keys)
        reward = ep["reward"][1:]  # row 0 is the reset observation
        returns.append(float(reward.sum()))
        if ds.env == "sawyer-door":
            successes.append(bool((reward > 0).any()))
        if ds.env == "dclaw-screw":
            state = ep["state"]
            angle = np.unwrap(np.arctan2(state[:, DCLAW_SIN], state[:, DCLAW_COS]))
            turned.append(float(angle[-1] - angle[0]))
            omegas.append(float(state[1:, DCLAW_OMEGA].mean()))
        if ds.env == "adroit-pen":
            goal = pen_at_goal(ep["state"][1:])
            successes.append(bool(goal[-1]))
            at_goal.append(float(goal.mean()))
    r = np.asarray(returns)
    out = {"episodes": ds.num_episodes, "transitions": ds.num_transitions, "mean": r.mean(), "std": r.std(),
           "min": r.min(), "median": float(np.median(r)), "max": r.max()}
    if successes:
        out["success"] = float(np.mean(successes))
    if at_goal:
        out["at_goal"] = float(np.mean(at_goal))
    if turned:
        out["omega"] = float(np.mean(omegas))
        out["turned"] = float(np.mean(turned))
    return out


def filmstrip(ds: Dataset, out: Path, frames: int = 10, scale: int = 2) -> None:
    from PIL import Image

    images = ds.episode(0, ["image"])["image"]
    picks = np.unique(np.linspace(0, len(images) - 1, frames).round().astype(int))
    strip = np.concatenate([images[i] for i in picks], axis=1).repeat(scale, 0).repeat(scale, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(out)
    print(f"filmstrip of {ds.env} expert episode 0, rows {', '.join(map(str, picks))} -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", type=Path)
    parser.add_argument("--filmstrip", type=Path, default=None, help="PNG of the expert store's first episode")
    args = parser.parse_args()
    rows, expert = [], None
    for path in args.stores:
        ds = Dataset.open(path)
        s = episode_stats(ds)
        random_ret, expert_ret = ds.reference_returns
        extra = ""
        if "success" in s:
            extra += f" | {100 * s['success']:.0f}%"
        if "at_goal" in s:
            extra += f" | {100 * s['at_goal']:.0f}%"
        if "turned" in s:
            extra += f" | {s['omega']:+.2f} | {s['turned']:+.1f}"
        rows.append(f"| {ds.split} | {s['episodes']} | {s['transitions']} | {s['mean']:.1f} | {s['std']:.1f} | "
                    f"{s['min']:.1f} | {s['median']:.1f} | {s['max']:.1f}{extra} |")
        if ds.split == "expert":
            expert = ds
    first = Dataset.open(args.stores[0])
    head = "| split | episodes | transitions | mean | std | min | median | max"
    if first.env == "sawyer-door":
        head += " | success"
    if first.env == "adroit-pen":
        head += " | success (at goal at the end) | steps at goal"
    if first.env == "dclaw-screw":
        head += " | valve rad/s | turned rad/episode"
    random_ret, expert_ret = first.reference_returns
    print(f"{first.env}: reference returns random {random_ret:.1f}, expert {expert_ret:.1f}")
    print(head + " |")
    print("|" + "---|" * (head.count("|")))
    print("\n".join(rows))
    if args.filmstrip is not None:
        if expert is None:
            raise SystemExit("error: --filmstrip needs the expert store among the stores given")
        filmstrip(expert, args.filmstrip)


if __name__ == "__main__":
    main()
