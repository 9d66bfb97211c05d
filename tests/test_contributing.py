"""CONTRIBUTING.md's recipes are true (issue #30): the files a recipe lists exist, and an elementwise penalty's name
appears in no source file its recipe leaves out, so a contributor who follows the list misses nothing."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()
SOURCE_DIRS = ("fusedreg", "csrc")
SOURCE_SUFFIXES = {".py", ".h", ".cpp", ".cu", ".cuh"}
# The penalties whose names mean nothing else in the code. l1 and l2 are also FTRL's closed-form strengths and the
# selection tools' penalty names, and the l1 switches are checked by their own recipe's tests (test_decoupled).
PENALTIES = ("l0", "nonneg")


def section(title):
    """The text of the recipe headed `title` (any heading level), up to its tests paragraph."""
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^Tests:|^#)", GUIDE, flags=re.M | re.S)
    assert m, f"CONTRIBUTING.md has no section {title!r}"
    return m.group(1)


# Where a name the guide shortens lives (`cpu/loop.h`, or `group.h` in the CPU column of its table).
FOLDERS = ("", "csrc/", "csrc/cpu/", "csrc/cuda/", "fusedreg/", "fusedreg/triton/")


def paths(text):
    """The repository paths a text names in backticks."""
    out = set()
    for name in re.findall(r"`([\w./*]+\.(?:py|h|cpp|cu|cuh|sh|md))`", text):
        if "*" in name:
            continue  # a pattern (`csrc/cpu/*.cpp`), not a file
        found = [f + name for f in FOLDERS if (ROOT / (f + name)).is_file()]
        assert len(found) <= 1, f"CONTRIBUTING.md's `{name}` could be any of {found}"
        out.add(found[0] if found else name)
    return out


def sources():
    for top in SOURCE_DIRS:
        for f in sorted((ROOT / top).rglob("*")):
            if f.suffix in SOURCE_SUFFIXES and f.is_file():
                yield f.relative_to(ROOT).as_posix(), f.read_text()


def test_every_file_the_guide_names_exists():
    missing = sorted(p for p in paths(GUIDE) if not (ROOT / p).is_file())
    assert not missing, f"CONTRIBUTING.md names files that do not exist: {missing}"


@pytest.mark.parametrize("name", PENALTIES)
def test_an_elementwise_penalty_lives_only_in_the_files_its_recipe_lists(name):
    listed = paths(section("Add an elementwise penalty"))
    assert "fusedreg/_ops.py" in listed and "csrc/fusedreg_math.h" in listed  # the parse found the list
    word = re.compile(rf"\b{name}\b")
    found = {path for path, text in sources() if word.search(text)}
    assert found, f"{name} is in no source file: the search is broken"
    assert found <= listed, (f"{name} appears in {sorted(found - listed)}, which CONTRIBUTING.md's 'Add an "
                             f"elementwise penalty' does not list: a new penalty would have to touch them too")
