"""The backend parity harness: every op case on a backend against the reference (`ref`).

    from graphir.parity import CASES, check_case, run_all
    table = run_all(["vulkan"], profile="ci")
    print(table.format())

Cases (one per op) live in `cases` (their seeded data in `inputs`), their hypothesis strategies and
the "ci"/"thorough" profiles in `strategies`, NMSE and the result type in `compare`, the checks
in `harness`; `perf` gives cases model-sized shapes and their flops / bytes (`graphir bench-ops`).
"""

from .cases import CASES, Case
from .compare import DEFAULT_NMSE, MATMUL_NMSE, Result, Status, compare, nmse, threshold_for
from .harness import SENTINEL, Cell, ParityFailure, ParityTable, check_case, check_examples, examples, run_all
from .inputs import Built, Inputs
from .strategies import PROFILE_ENV, PROFILES, profile
