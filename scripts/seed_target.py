#!/usr/bin/env python3
"""Hard-links the built dependencies of one cargo profile directory into another target
directory's, so that a build there (the mutation check's copy of icet-kernels, the sanitizer's
ASan build of it) compiles only the workspace crates: cudarc and the rest are the same crates at
the same paths with the same flags, hence fresh. Workspace crates are left out — theirs are
rebuilt (another path, or other build-script settings), and only dependencies are shared, whose
artifacts a rebuild would write identically. Fingerprints (small, rewritten in place) are copied.
A profile directory seeded once is not seeded again.

    scripts/seed_target.py target/debug target/emu-sanitize/debug
"""
import os
import shutil
import sys
from pathlib import Path

OURS = ("icet_", "icet-", "probe_cli", "probe-cli")


def seed_target(built: Path, target: Path) -> None:
    if (target / ".seeded").exists() or not built.is_dir():
        return
    for sub in ("deps", "build", ".fingerprint"):
        src = built / sub
        if not src.is_dir():
            continue
        (target / sub).mkdir(parents=True, exist_ok=True)
        place = shutil.copy2 if sub == ".fingerprint" else os.link
        for entry in src.iterdir():
            if entry.name.removeprefix("lib").startswith(OURS) or (target / sub / entry.name).exists():
                continue
            if entry.is_dir():
                shutil.copytree(entry, target / sub / entry.name, copy_function=place)
            else:
                place(entry, target / sub / entry.name)
    (target / ".seeded").touch()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    seed_target(Path(sys.argv[1]), Path(sys.argv[2]))
