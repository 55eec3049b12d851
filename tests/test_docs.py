"""The front door and the docs: the configuration page is the one the schemas generate, every relative link
and image resolves, and every command shown runs as written (its config and --set keys validate)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
ENTRY_POINTS = {"experiments/run.py": "experiments.runner", "experiments/tune.py": "experiments.tuning",
                "experiments/conditions.py": "experiments.conditions"}
# placeholders a reader replaces: such commands show a form, not a command to copy
PLACEHOLDERS = re.compile(r"CONFIG|OUTPUT_DIR|\bDIR\b|\bOUT\b|OUT/|\$|\[|<|\.\.\.|DIR_OR_CSV|KEY=VALUE|URL")


def test_the_configuration_page_is_generated_from_the_schemas_and_current():
    from experiments.config_docs import PAGE, page

    assert PAGE.read_text() == page(), "docs/configuration.md is stale: python -m experiments.config_docs --write"


def test_the_readme_is_a_front_door():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make run" in text and "make test" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: {target} does not exist"


def shown_commands(page: Path) -> list[str]:
    """Every entry-point command in the page's code blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", page.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if any(entry in line for entry in ENTRY_POINTS):
                commands.append(line)
    return commands


COMMANDS = [(page.name, command) for page in PAGES for command in shown_commands(page)]


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(COMMANDS)])
def test_every_command_shown_validates_as_written(page, command, capsys, monkeypatch):
    import importlib

    from tests.helpers.paths import shared_mnist_dir

    words = shlex.split(command)
    entry = next(i for i, w in enumerate(words) if w in ENTRY_POINTS)
    args = words[entry + 1:]
    if PLACEHOLDERS.search(command) or "--resume" in args or "--combine" in args:
        pytest.skip("a form with placeholders, or a folder to resume")
    if "--output-dir" in args:  # the check writes nothing anyway
        at = args.index("--output-dir")
        del args[at:at + 2]
    for flag in ("--workers", "--trials", "--only"):
        if flag in args:
            at = args.index(flag)
            del args[at:at + 2]
    data = shared_mnist_dir()
    if data is not None:  # --check reads the data the command would train on
        monkeypatch.setenv("NNDT_DATA", str(data))
    main = importlib.import_module(ENTRY_POINTS[words[entry]]).main
    code = main([*args, "--check"])
    err = capsys.readouterr().err
    if code == 2 and "MNIST files missing" in err and data is None:
        pytest.skip("MNIST not present (put it in data/MNIST/raw with `make data`, or set NNDT_DATA)")
    assert code == 0, err


def test_no_page_points_at_a_folder_a_users_clone_lacks():
    for page in PAGES:
        assert "../shared" not in page.read_text(), page.name


def test_every_optimizer_keys_text_is_written_for_that_optimizer():
    """A shared meaning may name other keys only when this optimizer has them (DiNNO's schedule is not from `lr`)."""
    from experiments.config_docs import meaning
    from optimizers import BASELINES, OPTIMIZERS

    every_key = {key for cls in {**OPTIMIZERS, **BASELINES}.values() for key in cls.config_schema}
    for name, cls in {**OPTIMIZERS, **BASELINES}.items():
        for key in cls.config_schema:
            text = meaning(f"optimizer.{key}", name)
            named = set(re.findall(r"`([a-z_0-9]+)`", text)) & every_key
            assert named <= set(cls.config_schema), (name, key, sorted(named - set(cls.config_schema)))
