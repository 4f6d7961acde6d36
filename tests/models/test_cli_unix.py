"""`graphir` as a Unix tool: --version, `python -m graphir`, pipes closed early, Ctrl-C, exit statuses
and streams (errors on stderr, 0 ok / 1 failed / 2 bad usage or input / 130 interrupted / 141 pipe),
prompts from files and stdin, stop strings, JSON statistics, the chat loop, `graphir parity` after the
main-job install. Each test is a regression test of a case in issue 15."""

from __future__ import annotations

import ast
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import graphir
from graphir.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
GRAPHIR = [sys.executable, "-m", "graphir"]


def run(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GRAPHIR, *argv], capture_output=True, text=True, input=stdin, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_version_and_python_m() -> None:
    r = run("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"graphir {graphir.__version__}")
    r = run("--help")
    assert r.returncode == 0 and "exit status:" in r.stdout and "130  interrupted" in r.stdout


@pytest.mark.parametrize("argv", [["ops"], ["dump"], ["generate", "-n", "8"]])
def test_a_closed_pipe_ends_quietly(argv: list[str]) -> None:
    """`graphir ... | head -1` with the reader gone before the first write: exit 141, no traceback."""
    p = subprocess.Popen([*GRAPHIR, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_pipe_closed_while_generating() -> None:
    p = subprocess.Popen([*GRAPHIR, "generate", "-n", "480", "-c", "512", "--seed", "3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) in (0, 141) and "Traceback" not in err, err


def test_ctrl_c_while_generating_exits_130_without_a_traceback() -> None:
    p = subprocess.Popen([*GRAPHIR, "generate", "-n", "480", "-c", "512"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
    os.set_blocking(p.stdout.fileno(), True)
    assert p.stdout.read(4)  # generating (the prompt is written once the prefill is done)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert b"Traceback" not in err and b"were removed from memory" not in err and b"interrupted" in err, err


def test_bad_regex_and_bad_debug_level_are_usage_errors() -> None:
    r = run("dump", "--name", "[")
    assert r.returncode == 2 and "invalid regular expression '['" in r.stderr and "Traceback" not in r.stderr
    r = run("ops", env={"GRAPHIR_DEBUG": "abc"})
    assert r.returncode == 2 and "GRAPHIR_DEBUG must be an integer" in r.stderr and "Traceback" not in r.stderr
    lib = subprocess.run([sys.executable, "-c", "import graphir"], env={**os.environ, "GRAPHIR_DEBUG": "abc"},
                         capture_output=True, text=True)  # fmt: skip
    assert lib.returncode == 0 and lib.stderr == ""  # a library never breaks on it


def test_inspect_invalid_goes_to_stderr(tmp_path, capsys) -> None:
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    assert main(["inspect", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert "INVALID" not in out and "INVALID" in err
    assert main(["inspect", "--no-tensors", str(graphir.models.tiny.shipped_model_path())]) == 0
    out, err = capsys.readouterr()
    assert "VALID qwen35" in out and "tokenizer.chat_template" in out and err == ""


def test_prompt_from_a_file_and_stdin(tmp_path, capsys, monkeypatch) -> None:
    assert main(["generate", "-p", "import os\n", "-n", "8", "-q"]) == 0
    want = capsys.readouterr().out
    f = tmp_path / "prompt.txt"
    f.write_text("import os\n")
    assert main(["generate", "--file", str(f), "-n", "8", "-q"]) == 0
    assert capsys.readouterr().out == want
    monkeypatch.setattr(sys, "stdin", io.StringIO("import os\n"))
    assert main(["generate", "--prompt", "-", "-n", "8", "-q"]) == 0
    assert capsys.readouterr().out == want
    assert main(["generate", "--file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_stop_and_json_statistics(tmp_path, capsys) -> None:
    assert main(["generate", "-n", "48", "--seed", "1", "-q"]) == 0
    full = capsys.readouterr().out.rstrip("\n")
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert main(["generate", "-n", "48", "--seed", "1", "--stop", stop, "--json"]) == 0
    out, err = capsys.readouterr()
    assert out == full[: full.find(stop)] + "\n"
    stats = json.loads(err)  # one JSON object, nothing else
    assert stats["stop_reason"] == "stop" and stats["n_prompt"] == 5 and stats["tokens_per_s"] > 0
    path = tmp_path / "stats.json"
    assert main(["generate", "-n", "8", "--json", str(path), "-q"]) == 0
    assert json.loads(path.read_text())["n_generated"] == 8 and capsys.readouterr().err == ""


def test_ctx_size_past_the_trained_length_warns(capsys) -> None:
    assert main(["generate", "-n", "4", "-c", "8192", "--ubatch", "16", "-q"]) == 0
    assert "warning: n_ctx=8192 exceeds the model's trained context length (4096)" in capsys.readouterr().err


def test_chat_reads_turns_and_keeps_the_history(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Write a loop\n\nAnd a class\n"))
    assert main(["generate", "--chat", "--system", "You write Python.", "-n", "12", "--seed", "2", "-q"]) == 0
    out = capsys.readouterr().out
    llm = graphir.load(n_ctx=512)
    history = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write a loop"}]
    first = llm.chat(history, max_tokens=12, seed=2)
    history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And a class"}]
    assert out == f"{first}\n{llm.chat(history, max_tokens=12, seed=2)}\n"


def test_parity_works_after_the_main_job_install(capsys) -> None:
    """hypothesis is a core dependency: `pip install -e .` is enough for `graphir parity`."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    assert any(r.startswith("hypothesis") for r in requires)
    assert any(r.startswith("jinja2") for r in requires) and any(r.startswith("tqdm") for r in requires)
    assert main(["parity", "-b", "cpu", "-c", "add", "-q"]) == 0
    assert "add" in capsys.readouterr().out


class Terminal:
    """A child process on a pseudo-terminal (stdin, stdout and stderr all a tty), read as it writes."""

    def __init__(self, *argv: str) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100: tqdm needs a width
        self.proc = subprocess.Popen([*GRAPHIR, *argv], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.buf = b""

    def read_until(self, pred, timeout: float = 60) -> bool:
        import select

        end = time.monotonic() + timeout
        while not pred(self.buf) and time.monotonic() < end:
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    break
        return pred(self.buf)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def test_chat_on_a_terminal_ctrl_c_ends_the_turn_ctrl_d_quits() -> None:
    t = Terminal("generate", "--chat", "-n", "3000", "-c", "4096", "--seed", "1")
    try:
        assert t.read_until(lambda b: b"> " in b), t.buf
        os.write(t.master, b"Write a loop\n")
        assert t.read_until(lambda b: len(b.partition(b"Write a loop\r\n")[2]) > 40), t.buf  # replying
        t.proc.send_signal(signal.SIGINT)
        assert t.read_until(lambda b: b"[stopped]\r\n> " in b), t.buf  # the turn ended, a new prompt
        os.write(t.master, b"\x04")  # Ctrl-D
        assert t.proc.wait(timeout=60) == 0
        assert b"Traceback" not in t.buf
    finally:
        t.close()


def test_progress_on_a_terminal_only(tmp_path) -> None:
    prompt = tmp_path / "long.txt"
    prompt.write_text("import os\n" * 40)  # > 2 ubatches of 16 tokens: the prefill shows a bar
    for quiet, shown in ((False, True), (True, False)):
        t = Terminal("generate", "--file", str(prompt), "--ubatch", "16", "-n", "2", *(["-q"] if quiet else []))
        try:
            assert t.proc.wait(timeout=60) == 0
            t.read_until(lambda b: False, timeout=0.3)
            assert (b"prefill: " in t.buf and b"%|" in t.buf) == shown, t.buf  # tqdm's "prefill:  40%|###  | 64/160"
        finally:
            t.close()
    r = run("generate", "--file", str(prompt), "--ubatch", "16", "-n", "2")  # stderr a pipe: no bar
    assert r.returncode == 0 and "%|" not in r.stderr and "\r" not in r.stderr and "prefill:" in r.stderr
