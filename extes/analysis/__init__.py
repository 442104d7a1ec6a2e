"""Statistics for human and automatic evaluation, on any CSV; no UI, no study app.

- `io`: reading and validating the Votes and Ratings CSVs (docs/analysis.md).
- `pairwise`: win/tie/loss with the sign test and a session bootstrap, win-rate matrices, Bradley-Terry.
- `agreement`: Fleiss' kappa, Krippendorff's alpha, percent agreement, dataset quality (Table 4).
- `plots`: figures; `report`: CSV, Markdown and report writers.
"""

from extes.analysis.agreement import (
    FLEISS_1971,
    FLEISS_GENERALIZED,
    AgreementResult,
    agreement,
    dataset_quality,
    fleiss_kappa,
    krippendorff_alpha,
    percent_agreement,
    rating_counts,
)
from extes.analysis.io import ASPECTS, AnalysisInputError, load_ratings, load_votes
from extes.analysis.pairwise import (
    BradleyTerryResult,
    WinRateMatrix,
    WinTieLossResult,
    bradley_terry,
    win_rate_matrix,
    win_tie_loss,
)
from extes.analysis.plots import plot_bradley_terry, plot_win_rate_heatmap, plot_win_tie_loss

__all__ = [
    "ASPECTS",
    "FLEISS_1971",
    "FLEISS_GENERALIZED",
    "AgreementResult",
    "AnalysisInputError",
    "BradleyTerryResult",
    "WinRateMatrix",
    "WinTieLossResult",
    "agreement",
    "bradley_terry",
    "dataset_quality",
    "fleiss_kappa",
    "krippendorff_alpha",
    "load_ratings",
    "load_votes",
    "percent_agreement",
    "plot_bradley_terry",
    "plot_win_rate_heatmap",
    "plot_win_tie_loss",
    "rating_counts",
    "win_rate_matrix",
    "win_tie_loss",
]
