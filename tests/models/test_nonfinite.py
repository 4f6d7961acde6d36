"""The non-finite guard: a decode whose logits hold NaN or inf raises NonFiniteError naming the
row (and, with GRAPHIR_DEBUG, the first graph node that held the NaN); the failing sequences are
removed from memory; `graphir generate` exits non-zero with the message instead of printing the
prompt and exiting 0."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from graphir import debug
from graphir.models.batch import Batch, split
from graphir.models.context import Context, NonFiniteError, _check_finite
from graphir.models.model import Model
from graphir.tools import gguf_mutate as gm
from graphir.tools.cli import main


def poisoned(tmp_path: Path, tensor: str = "blk.0.ssm_a", value: float = math.nan) -> Path:
    """The small dense model with every value of one F32 tensor set to `value`."""
    raw = gm.RawGGUF.parse(gm.base_file("dense-f32"))
    info = next(i for i in raw.infos if i.name == tensor)
    n = math.prod(info.ne)
    data = bytearray(raw.data)
    data[info.offset : info.offset + 4 * n] = struct.pack("<f", value) * n
    raw.data = bytes(data)
    path = tmp_path / "poisoned.gguf"
    path.write_bytes(raw.to_bytes())
    return path


def test_nan_logits_raise_and_the_sequence_is_removed(tmp_path: Path) -> None:
    ctx = Context(Model.load(poisoned(tmp_path)), n_ctx=16, n_batch=8, n_ubatch=8)
    with pytest.raises(NonFiniteError, match=r"non-finite logits \(NaN\) for batch token 3 \(seq 0, pos 3\)") as e:
        ctx.decode(Batch.simple([1, 2, 3, 4]))
    assert "GRAPHIR_DEBUG=1" in str(e.value)
    assert ctx.seq_pos_max(0) == -1, "the failing sequence was removed from memory"


def test_inf_weights_are_caught_too(tmp_path: Path) -> None:
    ctx = Context(Model.load(poisoned(tmp_path, "output_norm.weight", math.inf)), n_ctx=16, n_batch=8, n_ubatch=8)
    with pytest.raises(NonFiniteError, match=r"non-finite logits"):
        ctx.decode(Batch.simple([1, 2]))


def test_with_graphir_debug_the_first_nan_node_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debug, "LEVEL", 1)
    ctx = Context(Model.load(poisoned(tmp_path)), n_ctx=16, n_batch=8, n_ubatch=8)
    with pytest.raises(NonFiniteError, match=r"the first non-finite node: \S+-0 \(\w+\)"):
        ctx.decode(Batch.simple([1, 2, 3]))


def test_the_finite_check_is_exact_where_a_sum_overflows() -> None:
    """The guard's fast path (a finite sum) cannot pass a NaN or an infinity, and finite rows whose
    float32 sum overflows still pass (the exact check decides)."""
    ub = split(Batch.simple([1, 2], all_outputs=True), 8)[0]
    huge = np.full((2, 64), 3e38, np.float32)
    assert not np.isfinite(huge.sum())
    _check_finite(huge, "logits", ub, None)  # finite: no error
    for value, kind in ((math.inf, "inf"), (math.nan, "NaN")):
        bad = huge.copy()
        bad[1, 5] = value
        with pytest.raises(NonFiniteError, match=rf"\({kind}\) for batch token 1 \(seq 0, pos 1\), 1 of 2"):
            _check_finite(bad, "logits", ub, None)


def test_finite_models_decode_as_before(tmp_path: Path) -> None:
    path = tmp_path / "good.gguf"
    path.write_bytes(gm.base_file())
    out = Context(Model.load(path), n_ctx=16, n_batch=8, n_ubatch=8).decode(Batch.simple([1, 2, 3]))
    assert np.isfinite(out.logits).all()


@pytest.mark.parametrize("spec", [[], ["--spec", "mtp", "--draft-max", "2"]], ids=["plain", "mtp"])
def test_generate_exits_non_zero_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  spec: list[str]) -> None:  # fmt: skip
    rc = main(["generate", "-m", str(poisoned(tmp_path)), "-p", "abc", "-n", "4", "-c", "32", "--greedy", *spec])
    err = capsys.readouterr().err
    assert rc != 0
    assert "graphir generate: error:" in err and "non-finite logits (NaN)" in err
