"""The sources' claims decided on the statistics (numbers and JSON only, no torch)."""
