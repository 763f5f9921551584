"""The explanation report of a distillation run (paper: Table 5, Figs. 2, 3/6 and 4).

``write_report(out_dir, data)`` writes report.md, report.html, metrics.json and
figures/*.png; ``hypothesis_verdicts(layers, distilled_layer)`` decides the
paper's Hypotheses 1-3 from the per-role summaries of
``kdlens.discarding.analyze.summarize_role``.
"""

from kdlens.report.render import write_report
from kdlens.report.tables import hypothesis_verdicts

__all__ = ["write_report", "hypothesis_verdicts"]
