"""Fake model-part distributions (a package + its .dist-info with a RECORD) for the catalog tests."""

from __future__ import annotations

from pathlib import Path

IMPORT_LOG = "imported.log"  # a part package's __init__ appends its name here when (wrongly) imported


def make_part_dist(site: Path, package: str, data: bytes | None, version: str = "1.0") -> str:
    """Install ``package`` into ``site`` like a wheel of the real part packages: ``<module>/__init__.py`` with
    ``get_part_path()`` and ``<module>/data/part.bin`` holding ``data`` (left out of both disk and RECORD when
    None). Importing the module appends its name to ``site/imported.log``. Returns the module name."""
    module = package.replace("-", "_")
    pkg_dir = site / module
    (pkg_dir / "data").mkdir(parents=True)
    (pkg_dir / "__init__.py").write_text(
        "import os\n"
        f"with open({str(site / IMPORT_LOG)!r}, 'a') as log:\n"
        f"    log.write({module!r} + '\\n')\n"
        "def get_part_path():\n"
        "    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part.bin')\n")
    record = [f"{module}/__init__.py,,"]
    if data is not None:
        (pkg_dir / "data" / "part.bin").write_bytes(data)
        record.append(f"{module}/data/part.bin,,")
    dist_info = site / f"{module}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    record += [f"{dist_info.name}/METADATA,,", f"{dist_info.name}/RECORD,,"]
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    return module
