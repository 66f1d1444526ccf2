"""The report: Markdown, self-contained HTML and PNG figures from results.json (no torch)."""
