"""The guest agent's C under AddressSanitizer and UndefinedBehaviorSanitizer: its pure
parsers (frames, key=value records, JSON strings) over many random and truncated inputs,
and its failure paths (fork, pipe2, ptsname and allocations failing) without a crash, an
fd leak or a pid of -1 (tests/guest/agent_fuzz.c)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("agent_fuzz.c")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
CFLAGS = [*SANITIZE, "-g", "-O1", "-Wall", "-Wextra", "-Werror",
          "-Wno-unused-function", "-Wno-return-type"]  # fmt: skip


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("agent-fuzz")
    probe = work / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    if subprocess.run(["gcc", *SANITIZE, "-o", str(work / "probe"), str(probe)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("this gcc cannot build with -fsanitize=address,undefined (libasan/libubsan)")
    binary = work / "agent_fuzz"
    built = subprocess.run(["gcc", *CFLAGS, "-o", str(binary), str(HARNESS)],
                           capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return binary


@pytest.mark.parametrize("seed", [1, 20261206])
def test_parsers_survive_random_and_truncated_input(harness: Path, seed: int) -> None:
    run = subprocess.run([str(harness), "40000", str(seed)], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.startswith("ok 40000 cases")


def test_failure_paths_neither_crash_nor_leak(harness: Path) -> None:
    run = subprocess.run([str(harness), "failures"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip() == "ok failure paths"
