"""The researcher's workspace on first start (``sandbox.jupyterhub.spawner.copy_examples``):
the example notebooks are copied where missing, a researcher's own copy is never replaced,
and nothing follows a link the researcher put in their home."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandbox.jupyterhub.spawner import EXAMPLES, copy_examples


def test_the_project_ships_example_notebooks() -> None:
    assert len(sorted(EXAMPLES.glob("*.ipynb"))) >= 3


def test_examples_are_copied_once_and_a_researchers_copy_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    names = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))
    assert copy_examples(EXAMPLES, home) == names
    folder = home / "examples"
    assert sorted(p.name for p in folder.iterdir()) == names
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in names:
        copied = folder / name
        assert copied.read_bytes() == (EXAMPLES / name).read_bytes()
        assert stat.S_IMODE(copied.stat().st_mode) == 0o600

    # The researcher edits one and deletes another: the edit stays, the deleted one returns.
    edited, deleted = folder / names[0], folder / names[1]
    edited.write_text('{"my": "work"}')
    deleted.unlink()
    assert copy_examples(EXAMPLES, home) == [names[1]]
    assert edited.read_text() == '{"my": "work"}'
    assert deleted.read_bytes() == (EXAMPLES / names[1]).read_bytes()
    assert copy_examples(EXAMPLES, home) == []


def test_nothing_is_written_through_a_link(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (home / "examples").symlink_to(elsewhere)
    assert copy_examples(EXAMPLES, home) == []
    assert list(elsewhere.iterdir()) == []
    # A link in place of one notebook: that one is skipped, the link's target untouched.
    (home / "examples").unlink()
    (home / "examples").mkdir()
    target = elsewhere / "target"
    target.write_text("untouched")
    first = sorted(EXAMPLES.glob("*.ipynb"))[0].name
    (home / "examples" / first).symlink_to(target)
    assert first not in copy_examples(EXAMPLES, home)
    assert target.read_text() == "untouched"


def test_a_file_named_like_the_folder_leaves_the_home_alone(tmp_path: Path) -> None:
    (tmp_path / "examples").write_text("mine")
    assert copy_examples(EXAMPLES, tmp_path) == []
    assert (tmp_path / "examples").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_the_copies_belong_to_the_researchers_user(tmp_path: Path) -> None:
    owner = (65534, 65534)  # nobody: any uid other than the hub's
    copy_examples(EXAMPLES, tmp_path, owner=owner)
    folder = tmp_path / "examples"
    assert (folder.stat().st_uid, folder.stat().st_gid) == owner
    assert {(p.stat().st_uid, p.stat().st_gid) for p in folder.iterdir()} == {owner}
