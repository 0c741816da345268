"""What ``bench/lm.py`` writes: the table of plans, the PASS/FAIL checks of the issue,
the perplexity-vs-parameters plot, and the JSON / markdown report."""
from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional

from _lm_baseline import baseline_tag
from _outputs import write_json

BUDGETS = (0.3, 0.5)  # fractions of the parameters removed
VARIANTS = ("uniform weight norm", "global activation", "global activation + depth")


def kept_text(kept: Optional[Dict[str, List[int]]]) -> str:
    return ", ".join(f"{u} {k}/{n}" for u, (k, n) in sorted((kept or {}).items()))


def table(base: dict, rows: List[dict]) -> str:
    fl = lambda r: "n/a" if r.get("flops_ratio") is None else f"{r['flops_ratio']:.3f}"  # noqa
    lines = ["| budget | variant | params | FLOPs/token | kept | verify | ppl after cut "
             "| after distillation | after int8 | .keras MB (float → int8) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
             f"| | baseline | {base['params'] / 1e6:.2f} M (1.000) | 1.000 | | "
             f"| {base['ppl']:.2f} | | {base['ppl_int8']:.2f} "
             f"| {base['mb']:.1f} → {base['mb_int8']:.1f} |"]
    for r in rows:
        budget = f"−{r['budget'] * 100:.0f} %"
        if r["status"] != "ok":
            status = r["status"] if len(r["status"]) <= 120 else r["status"][:117] + "..."
            lines.append(f"| {budget} | {r['variant']} | {status} | | | | | | | |")
            continue
        verify = f"{r['verify']:.1e}" if isinstance(r["verify"], float) else "n/a"
        lines.append(f"| {budget} | {r['variant']} | {r['params'] / 1e6:.2f} M "
                     f"({r['params_ratio']:.3f}) | {fl(r)} | {kept_text(r['kept'])} "
                     f"| {verify} | {r['ppl_cut']:.2f} | {r['ppl_distilled']:.2f} "
                     f"| {r['ppl_int8']:.2f} | {r['mb']:.1f} → {r['mb_int8']:.1f} |")
    return "\n".join(lines)


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}: {text}"


def checks(base: dict, rows: List[dict], distill_steps: int, train_steps: int) -> List[str]:
    """The issue's checks, one line each (PASS, FAIL or N/A)."""
    by = {(r["budget"], r["variant"]): r for r in rows if r["status"] == "ok"}
    b0 = base["ppl"]
    out = [verdict(math.isfinite(b0), f"baseline test perplexity reported: {b0:.2f}")]
    for budget, key, limit in ((0.3, "ppl_distilled", 1.10), (0.3, "ppl_int8", 1.12),
                               (0.5, "ppl_distilled", 1.25)):
        act = by.get((budget, "global activation"))
        what = f"-{budget * 100:.0f} % global activation {key[4:]}"
        if act is None:
            out.append(f"N/A: {what} (plan not available)")
            continue
        out.append(verdict(act[key] <= limit * b0, f"{what} {act[key]:.2f} is "
                           f"{(act[key] / b0 - 1) * 100:+.1f} % of the baseline's "
                           f"(<= +{(limit - 1) * 100:.0f} %; params {act['params_ratio']:.3f})"))
    for budget in BUDGETS:
        act, uni = by.get((budget, "global activation")), by.get((budget, "uniform weight norm"))
        for key in ("ppl_cut", "ppl_distilled"):
            what = f"-{budget * 100:.0f} % global activation beats uniform, {key[4:]}"
            if act is None or uni is None:
                out.append(f"N/A: {what} (a plan is not available)")
                continue
            out.append(verdict(act[key] < uni[key], f"{what}: {act[key]:.2f} vs "
                               f"{uni[key]:.2f} (params {act['params_ratio']:.3f} vs "
                               f"{uni['params_ratio']:.3f})"))
    out.append(verdict(4 * distill_steps <= train_steps, f"distillation {distill_steps} steps "
                       f"<= a quarter of the baseline's {train_steps} training steps"))
    return out


def plot(base: dict, rows: List[dict], path: str, title: str) -> str:
    """Test perplexity against the parameter ratio: each plan after the cut, after
    distillation and after int8; the baseline as a line (log perplexity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    ax.axhline(base["ppl"], color="grey", ls="--", lw=1, label="baseline")
    ax.scatter(1.0, base["ppl"], color="grey", marker="s")
    colors = dict(zip(VARIANTS, ("tab:orange", "tab:blue", "tab:green")))
    seen = set()
    for r in rows:
        if r["status"] != "ok":
            continue
        c, x = colors[r["variant"]], r["params_ratio"]
        label = None if r["variant"] in seen else r["variant"]
        seen.add(r["variant"])
        ax.plot([x, x], [r["ppl_cut"], r["ppl_distilled"]], color=c, lw=0.8, alpha=0.6)
        ax.scatter(x, r["ppl_cut"], facecolors="none", edgecolors=c, marker="o")
        ax.scatter(x, r["ppl_distilled"], color=c, marker="o", label=label)
        ax.scatter(x, r["ppl_int8"], color=c, marker="x")
    ax.set_yscale("log")
    ax.set_xlabel("parameters / baseline parameters")
    ax.set_ylabel("test perplexity (hollow: cut; filled: distilled; x: int8)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(args, b, meta, rows, stages, started, train_steps, final) -> None:
    """The JSON (every time, when asked); at the end also the table, stage timings, checks,
    markdown and plot."""
    minutes = (time.time() - started) / 60
    verdicts = checks(b, rows, args.distill_steps, train_steps)
    if args.json:
        write_json(args.json, dict(baseline=b, training=meta, minutes=minutes, stages=stages,
                                   checks=verdicts, args=vars(args), rows=rows,
                                   complete=final))
    if not final:
        return
    text = table(b, rows)
    head = (f"python_docs, keras-hub Llama3CausalLM ({baseline_tag(args)}, "
            f"{b['params'] / 1e6:.2f} M parameters), trained {train_steps} steps in "
            f"{meta.get('train_seconds', 0) / 60:.1f} min; distillation {args.distill_steps} "
            f"steps a plan; test perplexity on {args.eval_batches} batches of {args.batch} x "
            f"{args.seq_len} tokens; {minutes:.1f} min in all")
    timing = "stages: " + "; ".join(f"{k} {v / 60:.2f} min" for k, v in stages.items())
    print(f"\n{head}\n\n{text}\n\n{timing}\n\n" + "\n".join(verdicts))
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(f"{head}\n\n{text}\n\n{timing}\n\n"
                    + "\n".join(f"- {v}" for v in verdicts) + "\n")
    if args.plot:
        plot(b, rows, args.plot, f"python_docs: keras-hub Llama3CausalLM "
             f"({b['params'] / 1e6:.2f} M parameters) cut, distilled "
             f"{args.distill_steps} steps, int8")
