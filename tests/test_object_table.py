"""The object table: one descriptor per file object, and paths looked up anew each time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llsupervise.policy.model import Ruleset
from llsupervise.rights import AccessFs
from llsupervise.supervisor.rules.binding import could_be_changed
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


def test_a_replaced_path_keeps_its_object_when_rebinding_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with ObjectTable() as table:
        old = table.open(str(tmp_path / "d"))
        os.rename(tmp_path / "d", tmp_path / "moved")
        (tmp_path / "d").symlink_to("/")
        asked: list[str] = []

        def refuse(path: str) -> bool:
            asked.append(path)
            return False

        kept = table.open(str(tmp_path / "d"), refuse)
        assert kept is old and asked == [str(tmp_path / "d")]
        assert table.open(str(tmp_path / "d"), lambda _: True) == object_id(os.stat("/"))


def _ruleset(rules: dict[Path, AccessFs]) -> Ruleset:
    """Every right handled, ``rules`` granted."""
    return Ruleset(AccessFs(sum(AccessFs)), fs={object_id(os.stat(p)): a for p, a in rules.items()})


def test_a_path_could_be_changed_where_names_may_be_made_or_removed_on_its_way(
    tmp_path: Path,
) -> None:
    root = Path(os.path.realpath(tmp_path))
    (root / "a" / "b").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / "link").symlink_to(root / "a")
    target = str(root / "a" / "b")
    assert not could_be_changed(target, _ruleset({root: AccessFs.READ_FILE}))
    assert could_be_changed(target, _ruleset({root / "a": AccessFs.MAKE_SYM}))
    assert could_be_changed(target, _ruleset({root: AccessFs.REMOVE_DIR}))
    # On the object itself (names beneath it) is not on the way to it.
    assert not could_be_changed(target, _ruleset({root / "a" / "b": AccessFs.MAKE_DIR}))
    # Through a symlink: the directories of the link's target count too.
    via_link = str(root / "link" / "b")
    assert could_be_changed(via_link, _ruleset({root / "a": AccessFs.REFER}))
    assert not could_be_changed(via_link, _ruleset({root / "elsewhere": AccessFs.REFER}))
    # Rights the layer does not handle are allowed everywhere.
    unhandled = Ruleset(AccessFs.READ_FILE)
    assert could_be_changed(target, unhandled)
