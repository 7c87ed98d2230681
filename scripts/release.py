"""Release helpers for the release workflow.

python scripts/release.py version          # gpustack_cli.__version__
python scripts/release.py notes VERSION    # that version's section of CHANGELOG.md
python scripts/release.py archive DIR NAME # DIR packed as NAME (.tar.gz or .zip)
python scripts/release.py sums DIR         # SHA256SUMS of the files in DIR, written there
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def version() -> str:
    found = re.search(r'^__version__ = "([^"]+)"', (ROOT / "gpustack_cli" / "__init__.py").read_text(), re.MULTILINE)
    if not found:
        sys.exit("no __version__ in gpustack_cli/__init__.py")
    return found.group(1)


def notes(wanted: str) -> str:
    """The text under `## [VERSION]` in CHANGELOG.md, up to the next version's heading."""
    text = (ROOT / "CHANGELOG.md").read_text()
    found = re.search(rf"^## \[{re.escape(wanted)}\][^\n]*\n(.*?)(?=^## \[|\Z)", text, re.MULTILINE | re.DOTALL)
    if not found:
        sys.exit(f"CHANGELOG.md has no section for {wanted}")
    return found.group(1).strip() + "\n"


def archive(folder: Path, name: Path) -> None:
    """`folder` packed under its own name, as the installer unpacks it."""
    if name.name.endswith(".zip"):
        shutil.make_archive(str(name.with_suffix("")), "zip", folder.parent, folder.name)
        return
    with tarfile.open(name, "w:gz") as packed:
        packed.add(folder, arcname=folder.name)


def sums(folder: Path) -> str:
    lines = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "SHA256SUMS"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.name}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))
    return "".join(lines)


def main() -> None:
    command, *args = sys.argv[1:] or ["version"]
    if command == "version":
        print(version())
    elif command == "notes":
        sys.stdout.write(notes(args[0] if args else version()))
    elif command == "archive":
        archive(Path(args[0]), Path(args[1]))
    elif command == "sums":
        sys.stdout.write(sums(Path(args[0])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
