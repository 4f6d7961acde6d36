"""tools/bench_spec.py end to end on the shipped model at its smallest settings: a table per mode with
the load average, a progress line per step, the reference rows."""

from __future__ import annotations

import pytest

from graphir.tools import bench_spec


def test_bench_spec_reports_both_modes_with_progress(capsys) -> None:
    argv = ["-b", "cpu", "--prompts", "1", "--n-predict", "6", "--draft-max", "1", "--p-min", "0", "0.5",
            "--textbook", "--uncoupled"]  # fmt: skip
    assert bench_spec.main(argv) == 0
    out, err = capsys.readouterr()
    assert "\ncpu, greedy (load average" in out and "\ncpu, sampled (load average" in out
    assert out.count("  plain ") == 2 and out.count("mtp 1 p>=0.5 ") == 2
    assert out.count("mtp 1 p>=0 textbook") == 1 and out.count("mtp 1 p>=0 uncoupled") == 1
    assert out.count("mtp 1 p>=0 adaptive") == 2  # what graphir generate --spec mtp runs, in both modes
    # (plain + 2 settings + adaptive) per mode, + 2 reference rows sampled: 10 settings, a warm-up and
    # one prompt each
    assert "[bench-spec" in err and "step 20/20]" in err


def test_bench_spec_repeats_the_prompts(capsys) -> None:
    argv = ["-b", "cpu", "--mode", "greedy", "--prompts", "1", "--n-predict", "4", "--draft-max", "1", "--repeat", "3"]
    assert bench_spec.main(argv) == 0
    out, err = capsys.readouterr()
    # plain, mtp 1, adaptive: a warm-up each, then the prompt 3 times
    assert "step 12/12]" in err and "(run 3/3)" in err and out.count("mtp 1 p>=0 adaptive") == 1
    with pytest.raises(SystemExit):
        bench_spec.main([*argv[:-1], "0"])


def test_expected_tokens_sums_the_acceptance_of_proposed_drafts() -> None:
    assert bench_spec.expected_tokens([0.9, 0.7, 0.4], 2) == pytest.approx(1.0 + 0.9 + 0.7)
