"""scripts/product_images.sh: the 2019 study's data assembled from the two public repositories
that hold it, as a user without Kaggle gets it (here from local clones of tiny stand-ins)."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from fashion_sweeps.data.sources import read_fashion_product

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "product_images.sh"


def git_repo(path: Path, files: dict[str, Path]) -> Path:
    """A repository at `path` committing each source file under its name."""
    path.mkdir(parents=True)
    for name, source in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, path / name)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "data"], check=True)
    return path


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_script_assembles_a_root_the_reader_reads(product_root: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "styles.csv.zip", "w") as archive:
        archive.write(product_root / "styles.csv", "styles.csv")
    styles = git_repo(tmp_path / "styles_repo", {"styles.csv.zip": tmp_path / "styles.csv.zip"})
    photos = {f"data/images/{p.name}": p for p in (product_root / "images").iterdir()}
    images = git_repo(
        tmp_path / "images_repo", {**photos, "README.md": product_root / "styles.csv"}
    )
    dest = tmp_path / "assembled"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(dest), str(styles), str(images)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["images", "styles.csv"]
    assert f"images/ ({len(photos)} photos)" in done.stdout
    assert read_fashion_product(dest).labels == read_fashion_product(product_root).labels


def test_the_script_says_how_to_call_it() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "scripts/product_images.sh DEST" in done.stderr
