"""The object table: one descriptor per file object, and paths looked up anew each time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llsupervise.supervisor.rules.objects import ObjectTable, object_id


def test_a_path_opened_again_gives_the_object_held_for_it(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with ObjectTable() as table:
        first = table.open(str(tmp_path / "d"))
        assert table.open(str(tmp_path / "d")) is first
        assert len(table) == 1


def test_a_path_whose_object_was_replaced_leads_to_the_new_one(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with ObjectTable() as table:
        old = table.open(str(tmp_path / "d"))
        os.rename(tmp_path / "d", tmp_path / "moved")
        (tmp_path / "d").mkdir()
        new = table.open(str(tmp_path / "d"))
        assert new != old
        assert new == object_id(os.stat(tmp_path / "d"))
        # Both held, each by its own descriptor, each the object it names.
        assert object_id(os.fstat(table.fd(old))) == object_id(os.stat(tmp_path / "moved"))
        assert object_id(os.fstat(table.fd(new))) == new


def test_a_path_that_is_gone_is_an_error_even_if_its_object_is_held(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with ObjectTable() as table:
        table.open(str(tmp_path / "d"))
        os.rename(tmp_path / "d", tmp_path / "moved")
        with pytest.raises(FileNotFoundError):
            table.open(str(tmp_path / "d"))


def test_a_released_object_is_opened_anew(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with ObjectTable() as table:
        obj = table.open(str(tmp_path / "d"))
        table.release(())
        assert len(table) == 0
        again = table.open(str(tmp_path / "d"))
        assert again == obj
        assert object_id(os.fstat(table.fd(again))) == obj  # a live descriptor, not the old one


def test_a_symlink_swapped_to_another_target_is_followed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with ObjectTable() as table:
        assert table.open(str(tmp_path / "link")) == object_id(os.stat(tmp_path / "a"))
        (tmp_path / "link").unlink()
        (tmp_path / "link").symlink_to(tmp_path / "b")
        assert table.open(str(tmp_path / "link")) == object_id(os.stat(tmp_path / "b"))
