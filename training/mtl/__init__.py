"""Multi-task optimization methods: each a short function of explicit inputs
(per-task losses, the K×D matrix of per-task gradients on the shared parameters, its
own state), one file per method, citing its paper (see ../shared/docs/ALGORITHMS.md)."""
