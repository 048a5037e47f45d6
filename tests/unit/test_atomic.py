import pytest

from recflow.atomic import atomic_dir, atomic_file


def test_atomic_dir_publishes_complete_directory(tmp_path):
    target = tmp_path / "v1"
    with atomic_dir(target) as staging:
        (staging / "a.txt").write_text("a")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "v1"
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("crash mid-export")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_or_replaces_existing(tmp_path):
    target = tmp_path / "v1"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(FileExistsError), atomic_dir(target):
        pass
    with atomic_dir(target, replace=True) as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_atomic_file_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(ValueError), atomic_file(target, "w") as handle:
        handle.write("new")
        raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
