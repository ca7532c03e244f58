"""Boot real microVMs under QEMU and drive them through the guest agent."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from ember.guest.client import AgentClient
from ember.guest.config import GuestConfig, read_exit_record
from ember.hypervisor.qmp import QMPClient
from tests.vm.conftest import BootedVM

pytestmark = pytest.mark.vm
Boot = Callable[[GuestConfig], Awaitable[BootedVM]]
BOOT_TIMEOUT = 60  # TCG on a loaded 2-core machine


async def wait_for_log(vm: BootedVM, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in vm.app_log():
        assert time.monotonic() < deadline, f"{text!r} never appeared in the serial log"
        await asyncio.sleep(0.1)


async def test_workload_runs_and_exit_code_reaches_host(boot: Boot) -> None:
    vm = await boot(
        GuestConfig(
            entrypoint=["/bin/sh", "-c"],
            cmd=['echo "greeting=$GREETING argv0=$0 uid=$(id -u) cwd=$(pwd)"; exit 3', "first"],
            env={"GREETING": "hello world"},
            working_dir="/srv/app",
            user="nobody",
        )
    )
    started = time.monotonic()
    async with await AgentClient.connect(vm.handle.agent_socket) as agent:
        ready = await agent.wait_ready(BOOT_TIMEOUT)
        print(f"QEMU start -> READY: {time.monotonic() - started:.2f}s")
        assert ready.state in ("running", "exited")
        exited = await agent.wait_exit(30)
    assert (exited.exit_code, exited.message) == (3, "exited with code 3")

    assert await vm.hv.wait_exit(vm.handle, timeout=30), "QEMU did not exit after power-off"
    record = read_exit_record(vm.config_disk)
    assert record is not None
    assert (record.exit_code, record.message) == (3, "exited with code 3")
    assert "greeting=hello world argv0=first uid=65534 cwd=/srv/app" in vm.app_log()


async def test_command_not_found(boot: Boot) -> None:
    vm = await boot(GuestConfig(cmd=["no-such-program", "--flag"]))
    async with await AgentClient.connect(vm.handle.agent_socket) as agent:
        status = await agent.wait_exit(BOOT_TIMEOUT)
    assert status.exit_code == 127
    assert status.message == "command not found: no-such-program"
    assert await vm.hv.wait_exit(vm.handle, timeout=30)
    record = read_exit_record(vm.config_disk)
    assert record is not None and record.exit_code == 127


async def test_readoption_and_graceful_stop(boot: Boot) -> None:
    script = "trap 'echo caught TERM; exit 7' TERM; echo waiting; while :; do sleep 0.2; done"
    vm = await boot(GuestConfig(entrypoint=["/bin/sh", "-c", script]))
    async with await AgentClient.connect(vm.handle.agent_socket) as agent:
        assert (await agent.wait_ready(BOOT_TIMEOUT)).state == "running"
        assert await agent.ping() < 5

    # A restarted Ember: fresh QMP and agent connections to the running VM.
    assert vm.hv.is_alive(vm.handle)
    async with await QMPClient.connect(vm.handle.qmp_socket) as qmp:
        assert (await qmp.execute("query-status"))["status"] == "running"
    async with await AgentClient.connect(vm.handle.agent_socket) as agent:
        status = await agent.wait_ready(10)
        assert status.state == "running" and status.pid > 1
        assert (await agent.request_status()).state == "running"

        # READY means exec succeeded; the shell installs its trap a little later.
        await wait_for_log(vm, "waiting")
        await agent.signal(signal.SIGTERM)
        exited = await agent.wait_exit(30)
    assert (exited.exit_code, exited.message) == (7, "exited with code 7")
    assert await vm.hv.wait_exit(vm.handle, timeout=30)
    assert "caught TERM" in vm.app_log()


async def test_exec_stat_pause_resume_and_kill_by_signal(boot: Boot) -> None:
    vm = await boot(GuestConfig(entrypoint=["/bin/sleep", "600"], env={"BASE": "from-config"}))
    async with await AgentClient.connect(vm.handle.agent_socket) as agent:
        assert (await agent.wait_ready(BOOT_TIMEOUT)).state == "running"

        script = 'echo "out $BASE $EXTRA $(pwd)"; echo err >&2; read line; echo "got $line"; exit 5'
        session = await agent.exec(["sh", "-c", script], env={"EXTRA": "x"}, cwd="/tmp")
        assert session.pid > 0
        await session.write(b"typed\n")
        await session.close_stdin()
        result, out, err = await session.wait()
        assert (result.exit_code, result.message) == (5, "exited with code 5")
        assert out == b"out from-config x /tmp\ngot typed\n" and err == b"err\n"

        # Bulk output beyond the credit window must arrive complete.
        session = await agent.exec(["sh", "-c", "cat /bin/busybox"])
        result, out, _ = await session.wait()
        assert result.exit_code == 0 and len(out) == (await agent.stat("/bin/busybox"))["size"]

        tty = await agent.exec(["sh", "-c", "tty; stty size"], tty=True, rows=40, cols=100)
        _, out, _ = await tty.wait()
        assert b"/dev/pts/" in out and b"40 100" in out

        missing = await agent.exec(["nope"])
        assert missing.result is not None and missing.result.exit_code == 127

        info = await agent.stat("/bin/sh")
        assert info["link_target"] == "busybox"

        await vm.hv.pause(vm.handle)
        async with await QMPClient.connect(vm.handle.qmp_socket) as qmp:
            assert (await qmp.execute("query-status"))["status"] == "paused"
        await vm.hv.resume(vm.handle)
        await agent.signal(signal.SIGKILL)
        exited = await agent.wait_exit(30)
    assert exited.exit_code == 137
    assert exited.message == "killed by signal 9 (SIGKILL)"
    assert await vm.hv.wait_exit(vm.handle, timeout=30)
