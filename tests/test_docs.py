"""Every ```python block of every docs/*.md page runs as written: each page in its own
fresh process, its blocks in order (like the README, tests/test_readme.py). Each page is
linked from the README, opens with a title and one paragraph saying what it covers, keeps
its lines to 100 characters, and its links lead somewhere."""
import glob
import os
import re

import pytest

from test_readme import README, ROOT, broken_links, long_lines, python_blocks, run_python_blocks

PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
NAMES = [os.path.basename(p) for p in PAGES]


def test_docs_pages_exist_and_the_readme_links_each():
    readme = open(README, encoding="utf-8").read()
    assert {"latency.md", "results.md", "pipeline.md", "transformers.md",
            "architecture.md"} <= set(NAMES)
    assert not [n for n in NAMES if f"docs/{n}" not in readme]


@pytest.mark.parametrize("page", PAGES, ids=NAMES)
def test_docs_page_python_blocks_run(page, tmp_path):
    if not python_blocks(open(page, encoding="utf-8").read()):
        pytest.skip("no python blocks")
    run_python_blocks(page, tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=NAMES)
def test_docs_page_shape(page):
    text = open(page, encoding="utf-8").read()
    lines = text.splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2][:1].isalpha(), lines[:3]
    assert not long_lines(page)
    assert not broken_links(page)
    assert not re.search(r"^```py$", text, re.M)  # a block labelled `py` would never run
