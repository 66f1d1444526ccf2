"""Statistics over results.json: paired differences, comparisons and verdicts at a resolution (numbers only, no torch)."""
