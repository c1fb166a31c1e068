"""The ``cxr-lightning`` command: data commands here, training through LightningCLI."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> int:
    """Entry point; tests call it in-process with a list of arguments."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] == "data":
        from cxr_lightning.data.commands import main as data_main

        return data_main(args[1:])
    print("usage: cxr-lightning data {stats,split,synth,download} ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
