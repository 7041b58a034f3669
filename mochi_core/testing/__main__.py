"""``python -m mochi_core.testing DIR``: write the tiny random-weight stand-ins (see :mod:`.tiny_files`) into DIR."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mochi_core.testing",
        description="Write tiny random-weight Mochi stand-ins (NOT Mochi: the video is noise) in the published "
        "formats and file names, with a tiny tokenizer, to try the command line, the Python API or ComfyUI.",
    )
    parser.add_argument("folder", help="where to write them (created if missing)")
    args = parser.parse_args(argv)
    from .tiny_files import LABEL, write_all

    written = write_all(args.folder)
    lines = [LABEL] + [f"  {path}" for path in written.values()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
