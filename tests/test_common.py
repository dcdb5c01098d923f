import pytest

from brain_tumor.core.outputs import atomic_dir


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half-written")
        raise RuntimeError("stage failed")
    assert (target / "a.txt").read_text() == "first"  # the previous complete output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and no scratch folder is left behind
