"""The documentation in docs/ stays true to the code.

* docs/configuration.md is exactly ``config_reference()``: regenerate it with
  ``python -m jaxkernel.config > docs/configuration.md`` when a config field changes.
* Every page is linked from the README's Documentation section, and every relative link
  in docs/ and that section points at a file (and heading) that exists.
* Python snippets compile; ``jaxkernel VERB`` and ``tpu_scripts/*.sh`` in shell snippets
  name real verbs and scripts; the pages on TPUs and Colab say what was not run on them.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_configuration_reference_is_current():
    from jaxkernel.config import config_reference

    expected = config_reference().rstrip("\n")
    assert (DOCS / "configuration.md").read_text().rstrip("\n") == expected, (
        "docs/configuration.md is stale: run `python -m jaxkernel.config > docs/configuration.md`")


def test_expected_pages_exist():
    names = {p.name for p in PAGES}
    assert {"configuration.md", "peft.md", "int8.md", "sharding.md", "checkpoints.md", "export_to_pytorch.md",
            "tpu.md", "colab.md", "troubleshooting.md"} <= names


def test_readme_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert "## Documentation" in readme
    section = readme.split("## Documentation", 1)[1]
    linked = {link.split("#")[0] for link in LINK.findall(section)}
    missing = [p.name for p in PAGES if f"docs/{p.name}" not in linked]
    assert not missing, f"pages not linked from the README's Documentation section: {missing}"


def _links():
    readme = (REPO / "README.md").read_text().split("## Documentation", 1)[1]
    yield from ((REPO / "README.md", link) for link in LINK.findall(readme))
    for page in PAGES:
        yield from ((page, link) for link in LINK.findall(page.read_text()))


def test_relative_links_resolve():
    bad = []
    for page, link in _links():
        if "://" in link or link.startswith("mailto:"):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(f"{page.name}: {link} (no such file)")
        elif anchor and target.suffix == ".md":
            headings = [_anchor(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)]
            if anchor not in headings:
                bad.append(f"{page.name}: {link} (no heading #{anchor})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_snippets_name_real_things(page):
    from jaxkernel.cli import build_parser

    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    for lang, body in FENCE.findall(page.read_text()):
        if lang == "python":
            compile(body, f"{page.name} snippet", "exec")
        if lang in ("bash", "sh"):
            for verb in re.findall(r"(?:^|\s)jaxkernel (\w+)", body):
                assert verb in verbs, f"{page.name}: `jaxkernel {verb}` is not a CLI verb ({sorted(verbs)})"
            for script in re.findall(r"tpu_scripts/([\w.]+\.sh)", body):
                assert (REPO / "tpu_scripts" / script).exists(), f"{page.name}: tpu_scripts/{script} does not exist"
            for config in re.findall(r"(configs/[\w.]+\.yaml)", body):
                assert (REPO / config).exists(), f"{page.name}: {config} does not exist"


def test_pages_say_what_ran_on_real_hardware():
    assert "Not exercised: anything on a real TPU" in (DOCS / "tpu.md").read_text()
    assert "has not been run on Colab itself, on a TPU or on a GPU" in (DOCS / "colab.md").read_text()
