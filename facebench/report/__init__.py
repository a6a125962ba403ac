"""Tables, figures and glued numbers for the notebooks and the book.

Notebooks only call these functions: every number they show is computed here
from stored runs, never typed in. One module per concern:
:mod:`~facebench.report.collecting` (the results table of a grid),
:mod:`~facebench.report.run_page` (one run's page),
:mod:`~facebench.report.tables` and :mod:`~facebench.report.figures` (the study's chapters),
:mod:`~facebench.report.published` (published numbers next to ours).
"""
from facebench.report.collecting import (NOT_RUN, collect, group_accuracies, headline, model_family,
                                      results_from_runs, runs_by_dataset)
from facebench.report.figures import (caption, hardest_pairs, hardest_pairs_gallery, per_dataset_figures,
                                      roc_det_figure, score_distributions_figure, show, use_style)
from facebench.report.published import load_published, published_sources, published_table
from facebench.report.run_page import (glue_metrics, metrics_table, notes, provenance_table, roc_figure,
                                       run_metrics, score_distribution_figure)
from facebench.report.tables import (bootstrap_table, dataset_table, extraction_disagreements, extraction_table,
                                     finetune_table, glue_results, group_decision_table, group_table,
                                     group_threshold_table, layout_table, learned_threshold_table, main_table,
                                     mcnemar_table, models_table, order_consistency_table, own_answer_table,
                                     paired_comparison, prompt_sensitivity_table, prompts_table, resolution_table,
                                     status_table, tar_at_far_table)

__all__ = [
    "NOT_RUN",
    "bootstrap_table",
    "caption",
    "collect",
    "dataset_table",
    "extraction_disagreements",
    "extraction_table",
    "finetune_table",
    "glue_metrics",
    "glue_results",
    "group_accuracies",
    "group_decision_table",
    "group_table",
    "group_threshold_table",
    "hardest_pairs",
    "hardest_pairs_gallery",
    "headline",
    "layout_table",
    "learned_threshold_table",
    "load_published",
    "main_table",
    "mcnemar_table",
    "metrics_table",
    "model_family",
    "models_table",
    "notes",
    "order_consistency_table",
    "own_answer_table",
    "paired_comparison",
    "per_dataset_figures",
    "prompt_sensitivity_table",
    "prompts_table",
    "provenance_table",
    "published_sources",
    "published_table",
    "resolution_table",
    "results_from_runs",
    "roc_det_figure",
    "roc_figure",
    "run_metrics",
    "runs_by_dataset",
    "score_distribution_figure",
    "score_distributions_figure",
    "show",
    "status_table",
    "tar_at_far_table",
    "use_style",
]
