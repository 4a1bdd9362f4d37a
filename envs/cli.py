"""``lompo-bench envs``: list the environments and look at what the agent sees."""

from __future__ import annotations

from pathlib import Path

import click

from lompo_bench.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def envs():
    """The four image environments of the LOMPO paper."""


@envs.command("list")
def list_envs():
    """Show each environment with its settings."""
    from rich.console import Console
    from rich.table import Table

    from lompo_bench.envs import SPECS

    table = Table(title="lompo-bench environments", caption="horizon in agent steps; px: the paper's image size")
    table.add_column("name", no_wrap=True)
    table.add_column("base")
    for column in ("repeat", "horizon", "obs", "px"):
        table.add_column(column, no_wrap=column != "obs")
    for spec in SPECS.values():
        keys = "image proprio state" if spec.has_proprio else "image state"
        table.add_row(spec.name, spec.base, str(spec.action_repeat), str(spec.horizon), keys, str(spec.image_size))
    Console().print(table)


@envs.command("show")
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG file to write.")
@click.option("--image-size", type=int, default=None, help="Pixels per side (default: the paper's size).")
@click.option("--steps", type=int, default=None, help="Agent steps to run (default: one full episode).")
@click.option("--frames", type=int, default=8, show_default=True, help="Frames in the strip, evenly spaced.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the env and the random policy.")
@click.option("--scale", type=int, default=2, show_default=True, help="Enlarge each pixel this many times.")
def show(name, out, image_size, steps, frames, seed, scale):
    """Render a filmstrip of one episode of env NAME under a uniformly random policy."""
    import numpy as np
    from PIL import Image

    from lompo_bench.envs import get_spec, make

    spec = get_spec(name)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {str(out)!r} is not a .png file; accepted: a path ending in .png")
    if steps is None:
        steps = spec.horizon
    if not 1 <= steps <= spec.horizon:
        raise UserError(f"--steps {steps} out of range; accepted: 1 to {spec.horizon} (the {name} horizon)")
    if not 1 <= frames <= 64:
        raise UserError(f"--frames {frames} out of range; accepted: 1 to 64")
    if not 1 <= scale <= 8:
        raise UserError(f"--scale {scale} out of range; accepted: 1 to 8")
    env = make(name, image_size=image_size, seed=seed)
    env.action_space.seed(seed)
    obs, info = env.reset()
    images, total, success = [obs["image"]], 0.0, False
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        images.append(obs["image"])
        total += reward
        success = success or bool(info.get("success", False))
    env.close()
    picks = np.unique(np.linspace(0, len(images) - 1, min(frames, len(images))).round().astype(int))
    strip = np.concatenate([images[i] for i in picks], axis=1)
    strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(out)
    summary = f"{name}: {steps} agent steps, return {total:.2f}"
    if spec.success_defined:
        summary += f", success {'yes' if success else 'no'}"
    click.echo(f"{summary}; frames at steps {', '.join(map(str, picks))} -> {out}")
