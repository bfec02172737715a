"""Config files for the commands: a YAML/JSON mapping of option names to values, under the command-line flags.

`split_config_path` takes the file off the command line (`run.yaml` as the first argument, `--config run.yaml` or
`--config=run.yaml`), `read_config_file` reads it, and `flags_given` tells which options the command line sets, so
a caller can layer defaults < file < flags.
"""

from __future__ import annotations

import argparse
import json
import os

CONFIG_EXTENSIONS = (".yaml", ".yml", ".json")


def read_config_file(path: str) -> dict:
    """A YAML or JSON mapping of argument names to values."""
    if not path.lower().endswith(CONFIG_EXTENSIONS):
        raise ValueError(f"Config file {path!r}: use a {'/'.join(CONFIG_EXTENSIONS)} file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f) if path.lower().endswith(".json") else yaml.safe_load(f)
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(
                f"Config file {path!r} is not valid {'JSON' if path.lower().endswith('.json') else 'YAML'}: "
                f"{' '.join(str(err).split())}"
            ) from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TypeError(f"Config file {path!r} holds a {type(values).__name__}: it must map argument names to values.")
    return values


def flags_given(argv: list[str]) -> set[str]:
    """Destination names of the `--flags` on the command line (`--no_x` counts as `x`)."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            given.add(name)
            if name.startswith("no_"):
                given.add(name[3:])
    return given


def split_config_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """The config file (`--config X`, `--config=X`, or a first positional `.yaml/.json`) and the other arguments."""
    argv = list(argv)
    path = None
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_EXTENSIONS):
        path = argv.pop(0)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.config is not None:
        if path is not None:
            raise ValueError(f"Two config files given ({path!r} and --config {known.config!r}): give one.")
        path = known.config
    return path, rest
