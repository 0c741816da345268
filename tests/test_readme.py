"""Every ```python block of README.md runs as written, in order, in one fresh process (the
blocks read as one session: later blocks use the model the first one builds). The README
stays a guide: at most 450 lines, lines of at most 100 characters, the install and test
commands CI runs, and links that lead somewhere. tests/test_docs.py does the same for the
pages of docs/, with the helpers defined here."""
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
INSTALL = ("pip install -r requirements.txt && pip install --no-deps kerassurgeon==0.2.0 && "
           "pip install --no-deps -e .")
TEST = "lint-imports && python -m pytest -q -n 2 --dist loadfile"
MAX_LINE = 100


def python_blocks(text):
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def run_python_blocks(path, cwd, timeout=600):
    """Run the ```python blocks of the Markdown file ``path`` in order, in one fresh
    process started in ``cwd`` (with the environment a user's shell would have), and fail
    with the block's traceback if one raises."""
    name = os.path.relpath(path, ROOT)
    blocks = python_blocks(open(path, encoding="utf-8").read())
    runner = textwrap.dedent(f"""
        import sys, traceback
        sys.path.insert(0, {ROOT!r})
        blocks = {blocks!r}
        ns = {{"__name__": "__readme__"}}
        for i, block in enumerate(blocks, 1):
            try:
                exec(compile(block, f"{name} python block {{i}}", "exec"), ns)
            except BaseException:
                traceback.print_exc()
                print(f"BLOCK {{i}} FAILED", file=sys.stderr)
                sys.exit(1)
            print(f"BLOCK {{i}} OK", flush=True)
    """)
    # a user's fresh process: not the Keras 2 choice that this test process made on import
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["SURGERY_COST_CACHE"] = os.path.join(str(cwd), "cost-cache")  # latency examples
    proc = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{name}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.count(" OK") == len(blocks), proc.stdout
    return blocks


def without_code(text):
    """The Markdown ``text`` with its fenced code blocks and inline code removed."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def link_targets(text):
    """Relative targets of inline links/images and of reference definitions (which may put
    the target on the next, indented line)."""
    prose = without_code(text)
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    targets += re.findall(r"^\[[^\]]+\]:\s*\n?\s*(\S+)", prose, re.M)
    return [t.split("#")[0] for t in targets
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def broken_links(path):
    folder = os.path.dirname(path)
    text = open(path, encoding="utf-8").read()
    return [t for t in link_targets(text) if t and not os.path.exists(os.path.join(folder, t))]


def long_lines(path, allowed=()):
    lines = open(path, encoding="utf-8").read().splitlines()
    return [(i, len(line)) for i, line in enumerate(lines, 1)
            if len(line) > MAX_LINE and line not in allowed]


def test_readme_has_python_blocks():
    blocks = python_blocks(open(README, encoding="utf-8").read())
    assert len(blocks) >= 3 and any("surgery.plan(" in b for b in blocks)
    assert any("latency_target=" in b for b in blocks)


def test_readme_python_blocks_run(tmp_path):
    run_python_blocks(README, tmp_path)


def test_readme_is_a_short_guide_with_the_ci_commands():
    lines = open(README, encoding="utf-8").read().splitlines()
    assert len(lines) <= 450, len(lines)
    assert INSTALL in lines and TEST in lines  # .ci/run runs exactly these two lines
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    assert INSTALL in ci and TEST in ci
    assert not long_lines(README, allowed=(INSTALL,))


def test_readme_links_resolve():
    assert not broken_links(README)
