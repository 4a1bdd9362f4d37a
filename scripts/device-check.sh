#!/usr/bin/env bash
# LOMPO on one GPU at the `paper` profile, bf16: is it fast enough, and does imagination stay
# on the device? For when an accelerator is lent (the `device` tool); tests and CI never need it.
#
#   scripts/device-check.sh             on the GPU machine, from the repository root (< 8 min)
#   scripts/device-check.sh --dry-run   anywhere, on CPU at smoke sizes: checks the script runs
#
# 1. Installs what it needs unless the current python already imports torch with CUDA and
#    lompo_bench: a venv (.device-venv) with torch==2.13.0 from PyPI and `pip install -e .`.
# 2. Builds synthetic data on the device (random frames, actions, rewards: speed does not depend
#    on the pixels, and no dataset travels with the 64 MiB working tree).
# 3. Times LOMPO's latent-model step (16 x 32 -> paper: 64 x 50 windows, depth 32, deter 256) and
#    its SAC agent step (256 real + 256 latent) under bf16 autocast, and one buffer-fill batch
#    (posterior of a window batch, then H-step rollouts through the ensemble).
# 4. Runs the rollout loop under torch.cuda.set_sync_debug_mode("error"): any host sync inside
#    it (a .item(), a nonzero(), a CPU-side branch on a device value) fails the check.
# 5. Prints steps/s and the extrapolated wall time of a whole paper-profile run (target: <= 30 min
#    on one H100-class GPU), and writes bench-output/device-check.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
if [[ " $* " != *" --dry-run "* ]]; then
  if ! "$PY" -c "import torch, lompo_bench; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== installing torch==2.13.0 and lompo-bench into .device-venv" >&2
    "$PY" -m venv .device-venv
    .device-venv/bin/pip install -q --upgrade pip
    .device-venv/bin/pip install -q "torch==2.13.0" -e .
    PY=.device-venv/bin/python
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi

exec "$PY" - "$@" <<'PYTHON'
import argparse
import json
import sys
import time
from pathlib import Path

import torch

parser = argparse.ArgumentParser(prog="device-check.sh")
parser.add_argument("--dry-run", action="store_true", help="CPU, smoke sizes, 1 timed step each")
parser.add_argument("--model-steps", type=int, default=20)
parser.add_argument("--agent-steps", type=int, default=300)
parser.add_argument("--env", default="walker")
args = parser.parse_args()

from lompo_bench import envs
from lompo_bench.algorithms import precision
from lompo_bench.algorithms.agents import SACBatch
from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.latent_model import LatentState
from lompo_bench.algorithms.lompo import LOMPO, phase_lengths

device = "cpu" if args.dry_run else "cuda"
if not args.dry_run and not torch.cuda.is_available():
    sys.exit("error: no CUDA device visible; run with --dry-run to check the script on CPU")
profile = "smoke" if args.dry_run else "paper"
model_steps, agent_steps = (1, 2) if args.dry_run else (args.model_steps, args.agent_steps)
if device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

env = envs.SPECS[args.env]
size = 32 if args.dry_run else env.image_size
attrs = envs.env_attrs(args.env, size)
action_dim = int(attrs["action_size"])
spec = DataSpec(env=args.env, image_shape=(size, size, 3), proprio_dim=int(attrs["proprio_size"]), action_dim=action_dim,
                horizon=int(attrs["horizon"]), action_repeat=int(attrs["action_repeat"]))
config = LOMPO.config_for(profile, spec)
agent = LOMPO(config, spec, device=device, seed=0)
model, c = agent.model, config
learner = getattr(agent, "agent", None) or agent.sac  # LOMPO's latent actor-critic
prec = "bf16"


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, n):
    fn()  # warm-up: kernels, allocator, cudnn autotuning
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n


# Synthetic window batch, made on the device.
g = torch.Generator(device=device).manual_seed(0)
B, L = c.model_batch, c.model_length
batch = {"image": torch.randint(0, 256, (B, L, size, size, 3), generator=g, device=device, dtype=torch.uint8),
         "action": torch.rand(B, L, action_dim, generator=g, device=device) * 2 - 1,
         "reward": torch.rand(B, L, generator=g, device=device),
         "is_first": torch.zeros(B, L, dtype=torch.bool, device=device)}
batch["is_first"][:, 0] = True
batch["is_terminal"] = torch.zeros(B, L, dtype=torch.bool, device=device)
if spec.proprio_dim:
    batch["proprio"] = torch.randn(B, L, spec.proprio_dim, generator=g, device=device)
obs_keys = ("image", "proprio") if spec.proprio_dim else ("image",)


def model_step():
    with precision.autocast(prec, device):
        loss, _, _ = model.loss(batch)
    agent.model_optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), c.model_grad_clip)
    agent.model_optim.step()


n = 2 * c.agent_batch
features = torch.randn(n, model.feature_dim, generator=g, device=device)
sac_batch = SACBatch(obs=features, action=torch.rand(n, action_dim, generator=g, device=device) * 2 - 1,
                     reward=torch.rand(n, generator=g, device=device), next_obs=features.roll(1, 0),
                     not_done=torch.ones(n, device=device))


def agent_step():
    with precision.autocast(prec, device):
        learner.update(sac_batch)


def posterior_starts():
    with torch.no_grad(), precision.autocast(prec, device):
        posts, _, _ = model.observe(model.embed({k: batch[k] for k in obs_keys}), batch["action"], batch["is_first"])
    deter, stoch = posts.deter.flatten(0, 1).float(), posts.stoch.flatten(0, 1).float()
    if c.rollout_starts and deter.shape[0] > c.rollout_starts:
        deter, stoch = deter[: c.rollout_starts], stoch[: c.rollout_starts]
    return LatentState(deter, stoch)


def rollout(start):
    if hasattr(learner, "explore"):  # LOMPO's exploration policy for rollouts
        actor = lambda f: learner.explore(f.float(), c.rollout_noise)
    else:
        actor = lambda f: learner.actor.sample(f.float())[0]
    with torch.no_grad(), precision.autocast(prec, device):
        return model.rollout(start, c.horizon, actor, c.penalty, c.penalty_scale)


print(f"device check: LOMPO {profile} profile on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}),"
      f" {prec}, {args.env} {size} px, windows {B}x{L}, depth {c.depth}, deter {c.deter}", file=sys.stderr)
model_s = timed(model_step, model_steps)
agent_s = timed(agent_step, agent_steps)
start = posterior_starts()
fill_s = timed(lambda: rollout(posterior_starts()), max(1, model_steps // 4))

# No host sync inside the rollout loop.
sync_check = "skipped (CPU)"
if device == "cuda":
    sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = rollout(start)
        sync_check = "ok: no host sync in the rollout loop"
    except RuntimeError as exc:
        sync_check = f"FAILED: {str(exc).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
else:
    out = rollout(start)
assert torch.isfinite(out["reward"]).all(), "non-finite latent rewards"

model_n, real_batches, latent_batches, agent_n = phase_lengths(c)  # real_batches: the whole-dataset fill steps
# Algorithm 1's buffer refresh every epoch_length agent steps: one window batch rolled out (an episode
# re-filtered costs about as much; counted as one more batch).
per_refresh = 1 + min(1, c.epoch_real_episodes)
refreshes = (c.agent_steps // c.epoch_length) * per_refresh
projected = model_n * model_s + (real_batches + latent_batches + refreshes) * fill_s + agent_n * agent_s
result = {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None, "profile": profile,
          "precision": prec, "torch": torch.__version__, "model_step_s": model_s, "model_steps_per_s": 1 / model_s,
          "agent_step_s": agent_s, "agent_steps_per_s": 1 / agent_s, "fill_batch_s": fill_s,
          "phases": {"model_steps": model_n, "real_batches": real_batches, "latent_batches": latent_batches,
                     "agent_steps": agent_n, "epoch_refresh_batches": refreshes},
          "projected_train_min": projected / 60, "sync_check": sync_check}
print(f"model step  {1 / model_s:8.2f} steps/s  ({1e3 * model_s:.1f} ms, {B * L / model_s:.0f} frames/s)")
print(f"agent step  {1 / agent_s:8.2f} steps/s  ({1e3 * agent_s:.2f} ms, batch {n})")
print(f"fill batch  {1e3 * fill_s:8.1f} ms      (posterior of {B}x{L} windows + {c.horizon}-step rollouts)")
print(f"rollout     {sync_check}")
print(f"projected   {projected / 60:8.1f} min of training for a whole {profile} run "
      f"({model_n} model steps, {agent_n} agent steps, {real_batches + latent_batches + refreshes} fill batches; "
      f"evaluation on top){'' if args.dry_run else '  target: <= 30 min'}")
out_dir = Path("bench-output")
out_dir.mkdir(exist_ok=True)
(out_dir / ("device-check-dry-run.json" if args.dry_run else "device-check.json")).write_text(json.dumps(result, indent=2))
sys.exit(1 if sync_check.startswith("FAILED") else 0)
PYTHON
