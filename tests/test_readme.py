"""Every ```python block of README.md runs as written, in order, in one fresh process (the
blocks read as one session: later blocks use the model the first one builds)."""
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def python_blocks(text):
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def test_readme_has_python_blocks():
    blocks = python_blocks(open(README, encoding="utf-8").read())
    assert len(blocks) >= 3 and any("surgery.plan(" in b for b in blocks)


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks(open(README, encoding="utf-8").read())
    runner = textwrap.dedent(f"""
        import sys, traceback
        sys.path.insert(0, {ROOT!r})
        blocks = {blocks!r}
        ns = {{"__name__": "__readme__"}}
        for i, block in enumerate(blocks, 1):
            try:
                exec(compile(block, f"README.md python block {{i}}", "exec"), ns)
            except BaseException:
                traceback.print_exc()
                print(f"BLOCK {{i}} FAILED", file=sys.stderr)
                sys.exit(1)
            print(f"BLOCK {{i}} OK", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" OK") == len(blocks), proc.stdout
