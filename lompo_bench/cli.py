"""The ``lompo-bench`` command. Each sub-command lives next to the code it drives and is
imported only when used, so ``lompo-bench --help`` stays fast and one broken part does not
take the others down."""

import importlib

import click

from . import __version__

# command name -> "module:attribute"
COMMANDS = {
    "envs": "lompo_bench.envs.cli:envs",
    "collect": "lompo_bench.collectors.cli:collect",
    "datasets": "lompo_bench.datasets_cli:datasets",
    "algos": "lompo_bench.run_cli:algos",
    "run": "lompo_bench.run_cli:run",
    "sweep": "lompo_bench.sweep_cli:sweep",
    "leaderboard": "lompo_bench.leaderboard.cli:leaderboard",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that part is not built (yet); anything else is a real error
                return None
            raise
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lompo-bench")
def cli():
    """Offline RL from images: environments, datasets, algorithms, leaderboard (LOMPO paper)."""


def main():
    cli(prog_name="lompo-bench")


if __name__ == "__main__":
    main()
