"""ctgen.io.atomic: files and folders committed whole or not at all, never over another's file without force,
transactions (``Claims``) that take a failed run's outputs back, backups of files replaced with force,
temporaries of dead processes removed."""

from __future__ import annotations

import os
import re

import pytest

from conftest import files_under
from ctgen.io.atomic import Claims, atomic_file, atomic_folder, remove_dead_temporaries, temporary_path
from ctgen.errors import OutputError

DEAD_PID = 999999999  # above any PID the kernel hands out


def test_temporary_path_is_a_hidden_sibling_naming_this_process(tmp_path):
    temporary = temporary_path(tmp_path / "a.png")
    assert temporary.parent == tmp_path
    assert re.fullmatch(rf"\.a\.png\.ctgen-{os.getpid()}-[0-9a-f]{{8}}\.tmp", temporary.name)
    assert temporary_path(tmp_path / "a.png", "old").suffix == ".old"
    assert temporary_path(tmp_path / "a.png") != temporary  # a fresh name each time


def test_atomic_file_writes_whole_and_creates_parents(tmp_path):
    target = tmp_path / "new" / "deeper" / "a.txt"
    with atomic_file(target, force=False, mode="w") as handle:
        handle.write("µ HU\n")
        assert not target.exists()  # nothing at the target until the block ends
    assert target.read_bytes() == "µ HU\n".encode()
    assert files_under(tmp_path) == ["new/deeper/a.txt"]


def test_atomic_file_refuses_an_existing_file_or_a_folder_without_force(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        with atomic_file(tmp_path / "a", force=False):
            pass
    with pytest.raises(OutputError, match="is a folder"):
        with atomic_file(tmp_path, force=True):
            pass
    assert (tmp_path / "a").read_bytes() == b"old" and files_under(tmp_path) == ["a"]


def test_atomic_file_with_force_replaces_and_leaves_no_backup_outside_a_transaction(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    with atomic_file(tmp_path / "a", force=True) as handle:
        handle.write(b"new")
    assert (tmp_path / "a").read_bytes() == b"new" and files_under(tmp_path) == ["a"]


def test_an_exception_in_the_block_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "a", force=True) as handle:
            handle.write(b"half")
            raise KeyboardInterrupt
    assert (tmp_path / "a").read_bytes() == b"old" and files_under(tmp_path) == ["a"]


def test_commit_refuses_a_target_that_appeared(tmp_path):
    target = tmp_path / "b.bin"

    def write():
        with atomic_file(target, force=False) as handle:
            handle.write(b"ours")
            target.write_bytes(b"theirs")

    with pytest.raises(OutputError, match="already exists"):
        write()
    assert target.read_bytes() == b"theirs" and files_under(tmp_path) == ["b.bin"]


def test_claims_roll_back_and_dead_temporaries_go(tmp_path):
    claims = Claims()
    for name in ("x", "y"):
        with atomic_file(tmp_path / name, force=False) as handle:
            handle.write(b"1")
        claims.add(tmp_path / name)
    claims.rollback()
    assert files_under(tmp_path) == []
    dead = tmp_path / ".z.ctgen-999999999-abcd.tmp"  # a PID that no process has
    dead.write_bytes(b"left by a killed run")
    alive = temporary_path(tmp_path / "w")
    alive.write_bytes(b"this process is writing it")
    assert remove_dead_temporaries(tmp_path) == [dead]
    assert files_under(tmp_path) == [alive.name]


def test_transactions_nest_and_only_the_outermost_keeps(tmp_path):
    (tmp_path / "old").write_bytes(b"old")
    with pytest.raises(RuntimeError), Claims():
        with Claims():
            with atomic_file(tmp_path / "new" / "a", force=False) as handle:
                handle.write(b"1")
            with atomic_file(tmp_path / "old", force=True) as handle:
                handle.write(b"replaced")
        assert (tmp_path / "new" / "a").exists() and (tmp_path / "old").read_bytes() == b"replaced"
        raise RuntimeError
    assert files_under(tmp_path) == ["old"] and (tmp_path / "old").read_bytes() == b"old"
    with Claims():
        with atomic_file(tmp_path / "old", force=True) as handle:
            handle.write(b"kept")
    assert files_under(tmp_path) == ["old"] and (tmp_path / "old").read_bytes() == b"kept"  # no backup left


def test_a_failed_transaction_puts_a_forced_file_back_and_removes_new_folders(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    with pytest.raises(RuntimeError), Claims() as claims:
        with atomic_file(tmp_path / "a", force=True) as handle:
            handle.write(b"new")
        with atomic_file(tmp_path / "made" / "b", force=False) as handle:
            handle.write(b"b")
        assert claims.paths == [tmp_path / "a", tmp_path / "made", tmp_path / "made" / "b"]
        assert len(files_under(tmp_path)) == 3  # a, made/b and the backup of a (a hidden .old hard link)
        raise RuntimeError
    assert (tmp_path / "a").read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["a"]


def test_atomic_folder_appears_whole_and_replaces_only_with_force(tmp_path):
    target = tmp_path / "series"
    with atomic_folder(target, force=False) as staging:
        (staging / "1.dcm").write_bytes(b"1")
        assert not target.exists()
    assert files_under(target) == ["1.dcm"]
    with pytest.raises(OutputError, match="already exists"):
        with atomic_folder(target, force=False):
            pass
    with pytest.raises(ValueError), atomic_folder(target, force=True) as staging:
        (staging / "2.dcm").write_bytes(b"2")
        raise ValueError
    assert files_under(tmp_path) == ["series/1.dcm"]  # the failed replacement left nothing
    with atomic_folder(target, force=True) as staging:
        (staging / "2.dcm").write_bytes(b"2")
    assert files_under(tmp_path) == ["series/2.dcm"]


def test_atomic_folder_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "series").write_bytes(b"a file")
    with pytest.raises(OutputError, match="not a folder"):
        with atomic_folder(tmp_path / "series", force=True):
            pass
    assert files_under(tmp_path) == ["series"]


def test_dead_temporary_folders_go_and_other_names_stay(tmp_path):
    dead_folder = tmp_path / f".out.ctgen-{DEAD_PID}-00ff.tmp"
    (dead_folder / "inner").mkdir(parents=True)
    (dead_folder / "inner" / "x").write_bytes(b"x")
    dead_backup = tmp_path / f".a.ctgen-{DEAD_PID}-00ff.old"
    dead_backup.write_bytes(b"old")
    lookalike = tmp_path / f"a.ctgen-{DEAD_PID}-00ff.tmp"  # not hidden: not ours
    lookalike.write_bytes(b"keep")
    assert sorted(remove_dead_temporaries(tmp_path)) == sorted([dead_folder, dead_backup])
    assert files_under(tmp_path) == [lookalike.name]
    assert remove_dead_temporaries(tmp_path / "missing") == []
