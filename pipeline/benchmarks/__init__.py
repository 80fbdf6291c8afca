"""`mtlrec bench …`: speed and memory, measured as ratios against a baseline in one run."""
