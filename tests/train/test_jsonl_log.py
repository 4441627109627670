"""The training log survives a run killed mid-write, and a resumed run appends cleanly."""

from __future__ import annotations

import json
import logging

import numpy as np

from napari_mpt_deblur.train._common import JsonlLog

RECORDS = [
    {"event": "baseline", "step": 0, "psnr": 21.5},
    {"event": "train", "step": 1, "loss": np.float32(0.25), "lr": 1e-4},
    {"event": "validation", "step": 1, "psnr": 22.125, "note": "ünïcode"},
]


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_intact_log_round_trips_without_warnings(tmp_path, caplog):
    log = JsonlLog(tmp_path / "run" / "log.jsonl")
    assert list(log.read()) == []  # no file yet
    for record in RECORDS:
        log.write(record)
    assert list(log.read()) == [json.loads(json.dumps(r, default=float)) for r in RECORDS]
    assert log.path.read_bytes().count(b"\n") == len(RECORDS)
    assert warnings_in(caplog) == []


def test_every_cut_of_the_last_line_reads_and_resumes_cleanly(tmp_path, caplog):
    """A kill can stop the last write after any byte; whatever is left must read, with a
    warning for a cut record, and the resumed run's records must start on a line of their
    own."""
    caplog.set_level(logging.WARNING, logger="napari_mpt_deblur")
    full = JsonlLog(tmp_path / "full.jsonl")
    for record in RECORDS:
        full.write(record)
    data = full.path.read_bytes()
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    complete = list(full.read())
    resumed = {"event": "resumed", "step": 1}

    for cut in range(last_start + 1, len(data)):  # a non-empty part of the last line
        caplog.clear()
        log = JsonlLog(tmp_path / f"cut{cut}.jsonl")
        log.path.write_bytes(data[:cut])
        whole_record = data[cut - 1:cut] == b"}"  # only the newline is missing

        read = list(log.read())

        assert read == (complete if whole_record else complete[:-1]), cut
        assert len(warnings_in(caplog)) == (0 if whole_record else 1), cut
        if not whole_record:
            assert "last line" in warnings_in(caplog)[0] and str(log.path) in \
                warnings_in(caplog)[0]

        caplog.clear()
        log.write(resumed)

        raw = log.path.read_bytes()
        assert raw.startswith(data[:cut])  # nothing written before was changed
        assert raw.endswith(b"\n" + json.dumps(resumed).encode() + b"\n"), cut
        assert list(log.read()) == [*read, resumed], cut
        # the cut record, now closed by a newline, is still skipped (and said so)
        assert len(warnings_in(caplog)) == (0 if whole_record else 1), cut


def test_append_to_an_intact_log_adds_no_blank_line(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    log.write(RECORDS[0])
    JsonlLog(log.path).write(RECORDS[2])  # a resumed run opens the log anew
    assert b"\n\n" not in log.path.read_bytes()
    assert [r["event"] for r in log.read()] == ["baseline", "validation"]
