"""README.md runs as written (issue #29).

Every ```python block of README.md runs, in README order, in a temporary folder (so the files the examples write
land there): a block whose first line is `# continues the block above` runs in the namespace of the block before
it, every other block in a fresh one. The `python -m fusedreg ...` lines of the ```bash blocks run where they
stand in that order (with this interpreter), so a block that reads what a command wrote (the saved model) finds
it. All tensors are CPU tensors: the examples run on the CPU backends. The ```json excerpt must be what the
`--json` command shown writes, to the digits shown.
"""
import decimal
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
CONTINUES = "# continues the block above"
# A fenced block at the start of a line: its language (may be empty), its text, up to the closing fence.
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.M | re.S)


def readme_blocks():
    """[(language, text, line of the opening fence)] for every fenced block of README.md, in order."""
    text = README.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def fusedreg_commands(bash):
    """The `python -m fusedreg ...` lines of a bash block, as argument lists for this interpreter."""
    commands = []
    for line in bash.splitlines():
        words = shlex.split(line, comments=True)
        if words[:3] == ["python", "-m", "fusedreg"]:
            commands.append([sys.executable] + words[1:])
    return commands


def option(command, name):
    return command[command.index(name) + 1] if name in command else None


class ReadmeRun:
    def __init__(self, folder):
        self.folder = folder
        self.namespaces = []  # (line, namespace) per python block, in order
        self.commands = []  # argument lists of the commands run, in order


def _run_readme(folder):
    run = ReadmeRun(folder)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    namespace = None
    for language, text, line in readme_blocks():
        if language == "python":
            if text.startswith(CONTINUES + "\n"):
                if namespace is None:
                    pytest.fail(f"README.md:{line}: the first python block cannot continue a block above")
            else:
                namespace = {"__name__": "__main__"}
            # Leading newlines make tracebacks give README.md's own line numbers.
            code = compile("\n" * line + text, str(README), "exec")
            try:
                exec(code, namespace)
            except BaseException:
                pytest.fail(f"README.md: the python block at line {line} fails as written:\n"
                            f"{traceback.format_exc()}")
            run.namespaces.append((line, namespace))
        elif language in ("bash", "sh", "console"):
            for command in fusedreg_commands(text):
                done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
                if done.returncode:
                    pytest.fail(f"README.md: the command in the bash block at line {line} failed "
                                f"(exit {done.returncode}): {shlex.join(command[1:])}\n{done.stdout}\n{done.stderr}")
                run.commands.append(command)
    return run


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield _run_readme(folder)
    finally:
        os.chdir(before)


def test_every_python_block_runs(readme_run):
    python = [line for language, _, line in readme_blocks() if language == "python"]
    assert [line for line, _ in readme_run.namespaces] == python
    assert len(python) >= 5


def test_swap_in_example_leaves_biases_unpenalized(readme_run):
    # The first example is the one users copy: L1 and decay on the weights only, with exact zeros to show.
    _, ns = readme_run.namespaces[0]
    model, opt = ns["model"], ns["opt"]
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        group = group_of[id(p)]
        if name.endswith("bias"):
            assert group["l1"] == 0 and group["weight_decay"] == 0, name
        else:
            assert group["l1"] > 0, name
    assert sum(int((p == 0).sum()) for p in model.parameters()) > 0


def _shown_json():
    """The README's ```json excerpt, parsed: numbers as the Decimals written; a list or object that ends in
    `...` gets a "..." item or key (the rest left out)."""
    (text,) = [text for language, text, _ in readme_blocks() if language == "json"]
    text = re.sub(r",\s*\.\.\.\s*\]", ', "..."]', text)
    text = re.sub(r",\s*\.\.\.\s*\}", ', "...": null}', text)
    return json.loads(text, parse_float=decimal.Decimal)


def _check_shown(shown, actual, where):
    if isinstance(shown, dict):
        assert isinstance(actual, dict), where
        for key, value in shown.items():
            if key != "...":
                assert key in actual, f"{where}: no key {key!r} in the command's JSON"
                _check_shown(value, actual[key], f"{where}.{key}")
    elif isinstance(shown, list):
        partial = shown[-1:] == ["..."]
        items = shown[:-1] if partial else shown
        assert isinstance(actual, list), where
        if partial:
            assert len(actual) >= len(items), where
        else:
            assert len(actual) == len(items), f"{where}: {actual} has {len(actual)} items, the README {len(items)}"
        for i, (s, a) in enumerate(zip(items, actual)):
            _check_shown(s, a, f"{where}[{i}]")
    elif isinstance(shown, decimal.Decimal):
        # Within half a unit of the last digit shown.
        half = decimal.Decimal(5).scaleb(shown.as_tuple().exponent - 1)
        assert isinstance(actual, (int, float)) and abs(decimal.Decimal(actual) - shown) <= half, \
            f"{where}: the README shows {shown}, the command wrote {actual}"
    else:
        assert shown == actual, f"{where}: the README shows {shown!r}, the command wrote {actual!r}"


def test_json_excerpt_is_what_the_command_writes(readme_run):
    (command,) = [c for c in readme_run.commands if "--json" in c]
    with open(readme_run.folder / option(command, "--json")) as f:
        actual = json.load(f)
    _check_shown(_shown_json(), actual, "README.md json")


def test_predict_block_reads_the_saved_model(readme_run):
    # The "Predict with a saved model" block loads the file a command above saved, and predicts from it.
    saved = [option(c, "--save-model") for c in readme_run.commands if "--save-model" in c]
    readers = [ns for _, ns in readme_run.namespaces if ns.get("path") in saved]
    assert readers, f"no python block loads the --save-model file of a command ({saved})"
    pred = readers[-1]["pred"]
    assert len(pred) == len(readers[-1]["rows"]) > 0


def test_checker_catches_a_wrong_digit():
    shown = json.loads('{"a": 1.19, "b": [45.16, "..."], "c": "x"}', parse_float=decimal.Decimal)
    _check_shown(shown, {"a": 1.1949, "b": [45.16003, 1.0], "c": "x", "d": 0}, "ok")
    for wrong in ({"a": 1.2, "b": [45.16], "c": "x"}, {"a": 1.19, "b": [45.17], "c": "x"},
                  {"a": 1.19, "b": [45.16], "c": "y"}, {"a": 1.19, "c": "x"}):
        with pytest.raises(AssertionError):
            _check_shown(shown, wrong, "wrong")
