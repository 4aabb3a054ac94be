"""The ``anl-fused`` command: a dispatcher over subcommands.

Convention: every subcommand is one module with ``configure(parser)`` (adds its arguments) and
``run(args) -> int`` (exit code; 2 for a usage or input error, printed as one line). Modules are
imported only when their command runs. Numbers are checked by argparse (``anl_fused.experiments.cli_types``):
every ``type=float`` option of every subcommand rejects ``nan`` and ``inf``, and the subcommands use
the shared range validators there.
"""

from __future__ import annotations

import importlib
import os
import sys

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "demo": (
        "anl_fused.experiments.demo",
        "train plain / ANL / opposite-ANL models on digits and compare (the main job)",
    ),
    "train": ("anl_fused.experiments.train.cli", "train a model of the zoo with the paper's protocol"),
    "models": ("anl_fused.experiments.models.cli", "list the model zoo with parameter counts and the paper's eps"),
    "study": (
        "anl_fused.experiments.study",
        "the pre-registered ANL study: pilot, main runs, report; resumable",
    ),
    "figures": ("anl_fused.experiments.figures", "draw the paper's figures as PNG"),
    "attack": ("anl_fused.experiments.attack_cli", "FGSM / IFGSM white-box and black-box transfer matrix"),
    "bench": (
        "anl_fused.benchmarks.step",
        "step benchmark: plain vs naive double pass vs reference vs TwoRound (+ its bf16 probe)",
    ),
}

# commands that existed once -> what replaces them (one line instead of argparse's "invalid choice")
RETIRED = {
    "table1": "the pre-registered study (`anl-fused study`, docs/study.md) replaces it; docs/table1.md names the "
    "commit that ran the short Table 1",
}

DESCRIPTION = (
    "anl-fused: train CNNs with Adversarial Noise Layers (You et al.) at a fraction of the naive "
    "double pass's cost, and run the paper's experiments. `anl-fused COMMAND --help` for details."
)


def main(argv: list[str] | None = None) -> int:
    from .experiments.cli_types import ArgumentParser  # the commands are the experiments' (and bench's)

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = ArgumentParser(prog="anl-fused", description=DESCRIPTION)  # every float option rejects nan / inf
    if argv[:1] and argv[0] in RETIRED:
        parser.error(f"{argv[0]!r} was retired: {RETIRED[argv[0]]}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if argv[:1] == [name]:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    args._argv = argv  # the command line as given (the demo records it)
    try:
        code = int(importlib.import_module(args._module).run(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:  # `anl-fused ... | head`: the reader has gone, which is no error to show a traceback for
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's recipe: no second error at exit
        return 141  # what a shell reports for a command killed by SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
