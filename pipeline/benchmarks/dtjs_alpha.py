"""`mtlrec bench dtjs_alpha`: DTJS with α learnt by its outer loop against the fixed-α
ablation (α kept at its seeded initial value, `method.outer=none`), with EW and STL.

DTJS (Zhou et al.) learns α, the coefficients of its inter-task weight φ, by a
hypergradient on a dev batch; with too few, too small updates the learnt α never leaves
its initial value and "DTJS" is the ablation. Census-income MMoE in the anchor's setting
at batch 512 (the setting where one epoch moves α by ≥ 0.02, issue 14), 3 seeds, paired
by seed with EW. Besides the table: α's trajectory per seed (first and last value, the
largest move of an entry, the number of updates) from the runs' diagnostics, which also
plot it (`dtjs` figure in each run's report). Writes reports/dtjs_alpha.json and .md.
"""

from __future__ import annotations

from pathlib import Path

from mtlrec.pipeline import config as config_mod
from mtlrec.pipeline.benchmarks.census import SETTING as CENSUS
from mtlrec.pipeline.benchmarks.measure import write_report
from mtlrec.pipeline.benchmarks.paper_tables import PaperTable, markdown, run_table, table_overrides
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.diagnostics import read
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import ingest_logs

LEARNT = "DTJS, learnt α"
TABLE = PaperTable(
    name="dtjs_alpha",
    title="DTJS: learnt α against the fixed-α ablation (census-income MMoE)",
    setting=[*CENSUS, "model=mmoe", "trainer.batch_size=512", "trainer.max_epochs=4",
             "method.diagnostics_every=50"],
    methods=[("STL", ["model=hps", "method=stl"]), ("EW", ["method=ew"]), (LEARNT, ["method=dtjs"]),
             ("DTJS, fixed α (ablation)", ["method=dtjs", "method.outer=none"])],
    columns=["income", "marital"], fmt=".4f", scale=1.0, mean=("mean_auc", "mean AUC", 1.0),
    paper="The DTJS paper reports no fixed-α ablation on census; its Table IV (MultiMNIST, QM9) "
          "compares DTJS with the other methods only.",
)


def run(cfg: Config, overrides: list[str]) -> dict:
    ingest_logs(config_mod.load(table_overrides(TABLE, cfg, overrides)))
    result = run_table(TABLE, cfg, overrides)
    learnt, fixed = TABLE.methods[2][1], TABLE.methods[3][1]
    result["alpha"] = [_trajectory(*([*result["setting"], *parts, f"seed={seed}"] for parts in (learnt, fixed)))
                       for seed in range(result["seeds"])]
    text = markdown(TABLE, result) + _alpha_markdown(result["alpha"])
    js, md = write_report(Path(cfg.paths.reports), TABLE.name, result, text)
    print(f"bench dtjs_alpha: wrote {js} and {md}")
    return result


def _records(overrides: list[str]) -> list[dict]:
    return read(RunFolder(config_mod.load(overrides).paths.run_dir).diagnostics("all"))[1]


def _trajectory(learnt: list[str], fixed: list[str]) -> dict:
    """α of one seed: its initial value (the fixed-α run's, drawn from the same seed) and
    after the last outer update of the learnt-α run, as the diagnostics recorded them."""
    initial = _records(fixed)[0]["dtjs_alpha"]
    updates = [u for r in _records(learnt) for u in r.get("dtjs_alpha_updates", [])]
    last = updates[-1]["dtjs_alpha"] if updates else initial
    move = max(abs(b - a) for ra, rb in zip(initial, last) for a, b in zip(ra, rb))
    return {"updates": len(updates), "initial": initial, "last": last, "largest_move": move}


def _alpha_markdown(alpha: list[dict]) -> str:
    lines = ["", "## α of the learnt-α runs", "",
             "α = (a; b), one value per task in each; initial = the seed's draw (the fixed-α run "
             "keeps it), last = after the learnt-α run's last outer update.", "",
             "| seed | updates | initial α (a; b) | last α (a; b) | largest move of an entry |",
             "| ---: | ---: | --- | --- | ---: |"]
    for seed, a in enumerate(alpha):
        fmt = (lambda m: "; ".join(", ".join(f"{v:.3f}" for v in row) for row in m) if m else "–")
        lines.append(f"| {seed} | {a['updates']} | {fmt(a['initial'])} | {fmt(a['last'])} | "
                     f"{a['largest_move']:.3f} |")
    return "\n".join(lines) + "\n"
