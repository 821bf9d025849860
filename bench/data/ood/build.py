"""Rebuild the out-of-domain evaluation texts of bench/quality.py from files on a Python 3.11 install.

  .venv/bin/python bench/data/ood/build.py      # writes code.txt and docs.txt next to this file

- code.txt: a fixed list of CPython 3.11 standard-library modules (PSF License v2), concatenated
  verbatim (nothing stripped), each preceded by a one-line '# ---- <name> ----' marker.
- docs.txt: the Python documentation's language-reference topics as pydoc ships them
  (Lib/pydoc_data/topics.py, generated from the Python docs; PSF License v2), every topic's
  text in sorted key order, separated by blank lines.
The files are committed; README.md records the source, licence and sha256 of each.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
CODE_MODULES = ["argparse.py", "dataclasses.py", "functools.py", "textwrap.py", "fractions.py",
                "statistics.py", "heapq.py", "shlex.py"]


def main() -> None:
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in CODE_MODULES:
        parts.append(f"# ---- {name} ----\n" + (lib / name).read_text(encoding="utf-8"))
    (HERE / "code.txt").write_text("\n".join(parts), encoding="utf-8")
    from pydoc_data.topics import topics

    (HERE / "docs.txt").write_text("\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n",
                                   encoding="utf-8")
    for f in ("code.txt", "docs.txt"):
        p = HERE / f
        print(f, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
