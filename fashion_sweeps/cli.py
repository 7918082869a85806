"""The `fashion-sweeps` command: one sub-command per job a user runs.

Sub-commands that run Hydra apps pass every further argument to Hydra as overrides
(`key=value`, `group=option`, `--multirun`, `--cfg job` ...).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "train": ("fashion_sweeps.train:main", "train and track one run (Hydra overrides follow)"),
    "screen": ("fashion_sweeps.sweeps.commands:screen", "the sweep's screen (resumable multirun)"),
    "full": ("fashion_sweeps.sweeps.commands:full", "full runs of the screen's top-k"),
    "sweep": ("fashion_sweeps.sweeps.commands:sweep", "screen, then full runs of its winners"),
    "samplers": ("fashion_sweeps.sampler_study:main", "train once per sampler, compare them"),
    "report": ("fashion_sweeps.sweeps.report:main", "a sweep's HTML/Markdown report"),
    "results": (
        "fashion_sweeps.recipes.command:main",
        "docs/results.md from the recipe runs (or --run)",
    ),
    "predict": ("fashion_sweeps.predict:main", "tag images or folders with a logged model (CSV)"),
    "export": (
        "fashion_sweeps.inference.export:main",
        "a logged model as ONNX / OpenVINO IR, checked against PyTorch",
    ),
    "export-backbone": (
        "fashion_sweeps.models.export:main",
        "a run's backbone as a file for backbone.weights_path",
    ),
}


# Commands that are Hydra apps of train's config: Hydra completes their overrides.
HYDRA_APPS = ("train", "screen", "full", "sweep")
COMPLETION = ("-sc", "--shell-completion")
PROG = "fashion-sweeps"


def complete(request: list[str]) -> int:
    """Shell completion (`-sc install=bash`, `-sc query=bash`, ...) for the console script.

    Hydra's completion names the executable after `sys.argv[0]` and completes overrides on the
    line after it; here the line also holds the sub-command. So the script is installed for
    `fashion-sweeps` itself, and a query completes the sub-command's name, or hands Hydra the
    line without it. Only Hydra's part imports the training code (seconds): names are instant."""
    if any(r.startswith("query=") for r in request):
        line = os.environ.get("COMP_LINE", "")
        words = line.split()
        if len(words) == 1 or (len(words) == 2 and not line.endswith(" ")):
            typed = words[1] if len(words) == 2 else ""
            print(" ".join(name for name in COMMANDS if name.startswith(typed)))
            return 0
        if words[1] not in HYDRA_APPS:
            return 0  # argparse commands: the shell completes file names
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (
            " " if line[-1:] == " " else ""
        )
    from fashion_sweeps.train import main as train_app

    sys.argv = [PROG, "--shell-completion", *request]
    train_app()
    return 0


def _load(target: str) -> Callable[[], object]:
    module, func = target.split(":")
    return getattr(__import__(module, fromlist=[func]), func)


def usage() -> str:
    lines = ["usage: fashion-sweeps COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`fashion-sweeps COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    from fashion_sweeps.redact import install_log_redaction

    install_log_redaction()  # before any command logs a tracking URI
    if name in COMPLETION:  # what the installed completion asks: `fashion-sweeps -sc query=bash`
        return complete(rest)
    if name in HYDRA_APPS and set(rest) & set(COMPLETION):
        return complete(rest[next(i for i, a in enumerate(rest) if a in COMPLETION) + 1 :])
    if name not in COMMANDS:
        print(f"fashion-sweeps: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    if name in HYDRA_APPS and not set(rest) & {"-h", "--help", "--cfg", "-c", "--info"}:
        from fashion_sweeps.output_folders import OutputFolderError, check_output_folder

        try:
            check_output_folder(rest)
        except OutputFolderError as err:
            print(f"fashion-sweeps {name}: {err}", file=sys.stderr)
            return 1
    # Hydra apps read sys.argv themselves.
    sys.argv = [f"fashion-sweeps {name}", *rest]
    target = COMMANDS[name][0]
    # Lightning's DDP starts ranks > 0 as `python -m <__main__.__spec__.name> <sys.argv[1:]>`:
    # point it at the command's module (`fashion-sweeps train` -> `python -m fashion_sweeps.train`).
    main_module = sys.modules["__main__"]
    spec = getattr(main_module, "__spec__", None)
    main_module.__spec__ = importlib.util.find_spec(target.split(":")[0])
    try:
        result = _load(target)()
    finally:
        main_module.__spec__ = spec
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
