"""Progress: a bar on a terminal, plain timed log lines anywhere else."""

from __future__ import annotations

import logging

from mtlrec.progress import Progress


def test_off_a_terminal_progress_is_a_log_line_every_few_seconds_and_no_bar(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="mtlrec.progress"):
        with Progress(200, "batches", "epoch 3", every_s=0.0, terminal=False) as bar:
            bar.update(50, loss="0.6931")
            bar.update(50)
    lines = [r.getMessage().split("; peak RSS ") for r in caplog.records]
    assert [line for line, _ in lines] == [
        "epoch 3: 50 / 200 batches (25%), loss 0.6931",
        "epoch 3: 100 / 200 batches (50%), loss 0.6931"]  # the last status stays shown
    assert all(0 < float(rss.removesuffix(" GB")) < 1024 for _, rss in lines)
    assert capsys.readouterr().err == ""  # no carriage-return bar in a file or a pipe


def test_off_a_terminal_short_work_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="mtlrec.progress"):
        with Progress(None, "rows", every_s=3600.0, terminal=False) as bar:
            bar.update(10_000)
    assert caplog.records == []


def test_on_a_terminal_a_bar_is_drawn(capsys):
    with Progress(10, "batches", "epoch 0", terminal=True) as bar:
        bar.update(10)
    assert "epoch 0" in capsys.readouterr().err
