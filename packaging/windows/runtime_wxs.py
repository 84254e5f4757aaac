"""Write the WiX fragment that installs the PyInstaller one-directory bundle next to the exe.

    python packaging/windows/runtime_wxs.py dist/tripkey-agent > build/runtime.wxs
    wixl -a x64 -D SourceDir=dist/tripkey-agent -D Version=0.1.0 -o tripkey-agent.msi \
        packaging/windows/tripkey-agent.wxs build/runtime.wxs

Every file of the bundle except tripkey-agent.exe (the service's own component in
tripkey-agent.wxs) becomes one component of the ComponentGroup "AgentRuntime", under INSTALLDIR
with the bundle's folder structure. Ids are derived from the relative path (stable across builds,
so upgrades replace files in place); Guid="*" lets the toolset (WiX or wixl) derive component GUIDs
from the install path. Paths in Source are relative to $(var.SourceDir), as wixl requires.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path, PurePosixPath
from xml.sax.saxutils import quoteattr

EXE = "tripkey-agent.exe"


def _id(prefix: str, relative: PurePosixPath) -> str:
    return f"{prefix}_{hashlib.sha1(relative.as_posix().encode()).hexdigest()[:24]}"


def fragment(bundle: Path) -> str:
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    files = [PurePosixPath(f.as_posix()) for f in files if f.as_posix() != EXE]
    if not (bundle / EXE).is_file():
        raise SystemExit(f"{bundle} has no {EXE}: not a PyInstaller one-directory build of the agent")
    tree: dict[PurePosixPath, list[PurePosixPath]] = {}
    for path in files:
        tree.setdefault(path.parent, []).append(path)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<Wix xmlns="http://schemas.microsoft.com/wix/2006/wi">',
        "  <Fragment>",
    ]
    component_ids: list[str] = []

    def emit(folder: PurePosixPath, depth: int) -> None:
        pad = "  " * depth
        for path in tree.get(folder, []):
            cid = _id("c", path)
            component_ids.append(cid)
            source = quoteattr(f"$(var.SourceDir)/{path.as_posix()}")
            lines.append(
                f'{pad}<Component Id="{cid}" Guid="*" Win64="yes"><File Id="{_id("f", path)}" '
                f'Name={quoteattr(path.name)} Source={source} KeyPath="yes" /></Component>'
            )
        children = sorted({p for p in tree if p.parent == folder and p != folder} | _parents_below(folder))
        for child in children:
            lines.append(f'{pad}<Directory Id="{_id("d", child)}" Name={quoteattr(child.name)}>')
            emit(child, depth + 1)
            lines.append(f"{pad}</Directory>")

    def _parents_below(folder: PurePosixPath) -> set[PurePosixPath]:
        """Folders directly below `folder` that hold files only deeper down."""
        return {p for d in tree for p in (d, *d.parents) if p.parent == folder and p != folder}

    lines.append('    <DirectoryRef Id="INSTALLDIR">')
    emit(PurePosixPath("."), 3)
    lines.append("    </DirectoryRef>")
    lines.append('    <ComponentGroup Id="AgentRuntime">')
    lines.extend(f'      <ComponentRef Id="{cid}" />' for cid in component_ids)
    lines.extend(["    </ComponentGroup>", "  </Fragment>", "</Wix>", ""])
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: runtime_wxs.py DIST_DIR   (the PyInstaller one-directory bundle)")
    sys.stdout.write(fragment(Path(sys.argv[1])))
