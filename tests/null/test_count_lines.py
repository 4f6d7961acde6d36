"""The code-line counter leaves out docstrings, comments and blank lines."""

from graphir.tools.count_lines import code_lines


def test_counts_code_only():
    src = '"""module doc"""\n# comment\n\nx = 1  # trailing\n\n\ndef f():\n    """doc\n    more"""\n    return (1,\n            2)\n'
    assert code_lines(src) == 4  # x = 1, def, return, continuation


def test_a_string_statement_that_is_not_first_counts():
    assert code_lines('x = 1\n"not a docstring"\n') == 2
