"""Reading records back: leaderboards, intervals, paired comparisons, plots, sample pictures, the HTML
page, the ratio study's tables and the baseline check. May import only the top-level shared modules
(records in, text and figures out)."""
