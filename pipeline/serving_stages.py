"""The CLI's serving stages: `mtlrec serve` and `mtlrec score`. Like `stages`, each calls
the function that does the work and prints what happened. Kept apart from `stages` so a
server process never imports torch or the training stack (7 s and 650 MB, checked by
the import contract in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

from mtlrec.pipeline import registry
from mtlrec.pipeline.config import Config, ConfigError
from mtlrec.serving.app import Settings
from mtlrec.serving.batcher import BatchLimits
from mtlrec.serving.served_log import LogSettings
from mtlrec.serving.workers import serve_workers
from mtlrec.serving.score import score_parquet


def run_serve(cfg: Config) -> None:
    s = cfg.serve
    settings = Settings(max_rows=s.max_rows, max_body_bytes=int(s.max_body_mb * 2**20),
                        poll_seconds=s.poll_seconds, threads=s.threads,
                        request_timeout_s=s.request_timeout_s,
                        batch=BatchLimits(s.max_batch_rows, s.max_wait_ms, s.max_queue_requests),
                        log=LogSettings(s.log_dir, s.log_sample, s.log_max_mb, s.log_file_rows, s.log_flush_s))
    print(f"serve: {s.model} on http://{s.host}:{s.port} (POST /predict, GET /health /ready /metrics; "
          f"KServe v2 under /v2), {s.workers} worker process(es)", flush=True)
    serve_workers(registry.model_source(cfg), settings, s.host, s.port, s.workers)


def run_score(cfg: Config) -> None:
    if not cfg.score.input or not cfg.score.output:
        raise ConfigError("mtlrec score needs input=<Parquet file or glob> and output=<file>")
    version, model = registry.load_served(cfg)
    result = score_parquet(model, cfg.score.input, Path(cfg.score.output), cfg.score.id_column,
                           cfg.score.chunk_rows)
    print(f"score: {result['rows']:,} rows scored by {cfg.serve.model} (version {version}) -> "
          f"{result['output']}; {result['rows_per_s']:,.0f} rows/s (onnxruntime alone on the same "
          f"rows: {result['onnxruntime_rows_per_s']:,.0f} rows/s)")
