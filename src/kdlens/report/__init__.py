"""The explanation report of a distillation run (paper: Table 5, Figs. 2, 3/6 and 4).

``write_report(out_dir, data)`` writes report.md, report.html, metrics.json and
figures/*.png; ``hypothesis_verdicts(layers, distilled_layer, estimators)``
decides the paper's Hypotheses 1-3 per layer and knowledge-point estimator from
the per-role summaries of ``kdlens.explain.analyze.summarize_role``, each
comparison on a paired bootstrap interval over the analysed images
(``paired_difference`` / ``metric_difference``).
"""

from kdlens.report.bootstrap import Interval, metric_difference, paired_difference
from kdlens.report.render import write_report
from kdlens.report.tables import hypothesis_verdicts, teacher_vs_random

__all__ = ["write_report", "hypothesis_verdicts", "teacher_vs_random", "paired_difference", "metric_difference",
           "Interval"]
