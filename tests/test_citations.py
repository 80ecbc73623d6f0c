"""The repository documents itself: every repository path, document and section that the README, docs/, the code,
the yamls, the tests, the benchmarks and the notebooks cite exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".ipynb", ".sbatch", ".cfg", ".toml", ".txt", ""}

# A path below one of the repository's folders, ending in a file name with a suffix (or a glob) or in "/": prose such
# as "yonos/BasicSR" (a ratio) and placeholders such as "yonos/assets/NAME" are not paths.
REPO_PATH = re.compile(r"(?<![\w./~$:@-])((?:yonos|tests|experiments|benchmarks|notebooks|docs|\.ci)/[\w./*-]*)")
CITED_FILE = re.compile(r"\.(py|md|yaml|yml|ipynb|json|cfg|sbatch)$|/$|\*")
# A document cited without its folder ("method.md section 2", "(evaluation.md)"): it must be at the root or beside
# the citing file. File names the commands write (summary.md, a model card's README.md) are not citations.
BARE_DOC = re.compile(r"(?<![\w./-])([\w-]+\.md)(?=\s*(?:section|§|\)))")
BARE_TEST = re.compile(r"(?<![\w./-])(test_\w+\.py)\b")
# A section: `docs/method.md, "Heading"`, `README: "Heading"`, `README's "Heading"` (notebooks escape the quotes).
SECTION = re.compile(r"(?<![\w./\"'-])((?:[\w-]+/)*(?:README(?:\.md)?|[\w-]+\.md))(?::|,|'s)\s+\\?\"([^\"\\]+)\\?\"")


def cited_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "setup.cfg"]
    for top in ("docs", "yonos", "experiments", "tests", "benchmarks", "notebooks"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in SUFFIXES and "__pycache__" not in path.parts and path != Path(__file__).resolve():
                files.append(path)
    return [path for path in files if path.is_file()]


def has_section(document: Path, section: str) -> bool:
    """Whether a heading of ``document`` is ``section``, or starts with it and a colon ("Recipe on record: ...")."""
    titles = [line.lstrip("#").strip().replace("`", "") for line in document.read_text().splitlines() if line[:1] == "#"]
    section = section.replace("`", "")
    return any(title == section or title.startswith(f"{section}:") for title in titles)


def problems_in(path: Path) -> list[str]:
    text, found = path.read_text(errors="replace"), []
    for match in REPO_PATH.finditer(text):
        cited = match.group(1).rstrip(".,;:")
        if CITED_FILE.search(cited) and not (ROOT / cited).exists() and not any(ROOT.glob(cited.rstrip("/"))):
            found.append(f"path {cited}")
    bare = BARE_DOC.findall(text)
    found += [f"document {name}" for name in bare if not (ROOT / name).is_file() and not (path.parent / name).is_file()]
    found += [f"test file {name}" for name in BARE_TEST.findall(text) if not (ROOT / "tests" / name).is_file()]
    for document, section in SECTION.findall(text):
        target = ROOT / (document if document.endswith(".md") else f"{document}.md")
        if not target.is_file():
            found.append(f"document {document}")
        elif not has_section(target, section):
            found.append(f'section "{section}" of {document}')
    return found


def test_every_cited_path_document_and_section_exists() -> None:
    missing = [f"{path.relative_to(ROOT)}: {problem}" for path in cited_files() for problem in problems_in(path)]

    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("see tests/test_degradations_bicubic.py", "path tests/test_degradations_bicubic.py"),
        ("(method.md section 2.2)", "document method.md"),
        ('docs/method.md, "Stage 9: nothing"', 'section "Stage 9: nothing" of docs/method.md'),
        ('README: "Method in two screens"', 'section "Method in two screens" of README'),
        ("checked by test_nowhere.py", "test file test_nowhere.py"),
    ],
)
def test_the_check_catches_a_missing_citation(tmp_path: Path, line: str, problem: str) -> None:
    citing = tmp_path / "citing.py"
    citing.write_text(f"# {line}\n# docs/method.md, \"Stage 2: scale distillation\" and yonos/images.py exist\n")

    assert problems_in(citing) == [problem]
