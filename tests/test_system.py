"""The cores a job may use: CPU affinity capped by a container's cgroup CPU quota."""

from __future__ import annotations

import os

import pytest
from helpers import smooth_image, write_image

from dsprep import build, generators, split, system
from dsprep.train import options


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_at_the_root_is_rounded_up(tmp_path):
    # What a container started with --cpus 2.5 sees: its own group mounted at the root.
    _write(tmp_path / "fs" / "cpu.max", "250000 100000\n")
    _write(tmp_path / "cgroup", "0::/\n")
    assert system.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "cgroup") == 3


def test_cgroup_v2_without_a_quota_is_none(tmp_path):
    _write(tmp_path / "fs" / "cpu.max", "max 100000\n")
    _write(tmp_path / "cgroup", "0::/\n")
    assert system.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "cgroup") is None


def test_cgroup_v2_tightest_quota_of_the_own_group_and_its_parents(tmp_path):
    # A systemd slice with CPUQuota=400% holding a scope limited to 150%.
    fs = tmp_path / "fs"
    _write(fs / "cpu.max", "max 100000\n")
    _write(fs / "batch.slice" / "cpu.max", "400000 100000\n")
    _write(fs / "batch.slice" / "job.scope" / "cpu.max", "150000 100000\n")
    _write(fs / "other.slice" / "cpu.max", "100000 100000\n")  # not this process's
    _write(tmp_path / "cgroup", "0::/batch.slice/job.scope\n")
    assert system.cgroup_cpu_quota(fs, tmp_path / "cgroup") == 2

    _write(fs / "batch.slice" / "job.scope" / "cpu.max", "max 100000\n")
    assert system.cgroup_cpu_quota(fs, tmp_path / "cgroup") == 4


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    fs = tmp_path / "fs"
    _write(tmp_path / "cgroup", "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    _write(fs / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(fs / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert system.cgroup_cpu_quota(fs, tmp_path / "cgroup") is None

    _write(fs / "cpu,cpuacct" / "cpu.cfs_quota_us", "50000\n")
    assert system.cgroup_cpu_quota(fs, tmp_path / "cgroup") == 1
    _write(fs / "cpu,cpuacct" / "cpu.cfs_quota_us", "400000\n")
    assert system.cgroup_cpu_quota(fs, tmp_path / "cgroup") == 4


def test_no_cgroup_files_and_unreadable_ones_are_no_quota(tmp_path):
    assert system.cgroup_cpu_quota(tmp_path / "none", tmp_path / "none-either") is None
    _write(tmp_path / "fs" / "cpu.max", "garbage\n")
    _write(tmp_path / "cgroup", "0::/\n")
    assert system.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "cgroup") is None


def test_memory_room_is_the_least_of_available_ram_and_each_cgroup_limit_left(tmp_path):
    fs, cgroup, meminfo = tmp_path / "fs", tmp_path / "cgroup", tmp_path / "meminfo"
    _write(meminfo, "MemTotal:       8000000 kB\nMemAvailable:   4000000 kB\n")
    assert system.memory_room(fs, cgroup, meminfo) == (4_096_000_000, "memory (available RAM)")
    # v2: a Slurm job's group below its parent; the parent has no limit of its own.
    _write(cgroup, "0::/slurm/job_7/step_0\n")
    _write(fs / "slurm" / "memory.max", "max\n")
    _write(fs / "slurm" / "job_7" / "memory.max", "1500000000\n")
    _write(fs / "slurm" / "job_7" / "memory.current", "400000000\n")
    assert system.memory_room(fs, cgroup, meminfo) == (
        1_100_000_000, f"memory (the job's limit of 1,500.0 MB, cgroup {fs / 'slurm' / 'job_7'})")
    # Over its limit: no room, not a negative one.
    _write(fs / "slurm" / "job_7" / "memory.current", "1600000000\n")
    assert system.memory_room(fs, cgroup, meminfo)[0] == 0
    # Inactive file cache (a copied dump's pages) is the kernel's to take back: not in use.
    _write(fs / "slurm" / "job_7" / "memory.stat",
           "anon 300000000\nfile 1300000000\nactive_file 100000000\n"
           "inactive_file 1200000000\n")
    assert system.memory_room(fs, cgroup, meminfo)[0] == 1_500_000_000 - 400_000_000
    # v1, a container's group mounted at the root; "no limit" is a huge number.
    v1, group = tmp_path / "v1", tmp_path / "cgroup1"
    _write(group, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    _write(v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(v1 / "memory" / "docker" / "abc" / "memory.usage_in_bytes", "100\n")
    assert system.memory_room(v1, group, meminfo)[1] == "memory (available RAM)"
    _write(v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "2000000000\n")
    assert system.memory_room(v1, group, meminfo)[0] == 2_000_000_000 - 100
    _write(v1 / "memory" / "docker" / "abc" / "memory.usage_in_bytes", "1900000000\n")
    _write(v1 / "memory" / "docker" / "abc" / "memory.stat",
           "cache 1500000000\ninactive_file 9\ntotal_inactive_file 1400000000\n")
    assert system.memory_room(v1, group, meminfo)[0] == 2_000_000_000 - 500_000_000
    # Nothing readable: not known.
    assert system.memory_room(tmp_path / "no", tmp_path / "no", tmp_path / "no") is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_usable_cpus_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: None)
    assert system.usable_cpus() == 64
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: 3)
    assert system.usable_cpus() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert system.usable_cpus() == 2


def test_every_stage_defaults_to_the_quota_not_the_host(monkeypatch, tmp_path):
    # A 64-core host, a container limited to 3 cores.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(system, "cgroup_cpu_quota", lambda: 3)
    assert build.BuildOptions().worker_count == 3
    assert split.default_workers() == 3
    assert options.default_workers() == 3
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    write_image(folder / "a.png", smooth_image(8, 8))
    gen = generators.DirectoryGenerator(tmp_path / "images", image_size=(8, 8), batch_size=1)
    assert gen.workers == 3


def test_a_stderr_pipe_full_for_a_moment_loses_that_text_not_the_stream():
    # A non-blocking pipe whose reader lags: click flushes after every echo, and a flush that
    # would block silenced every later note, warning and error for good.
    import click

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with os.fdopen(write_end, "w", buffering=1) as raw:
        stream = system.ForgivingStream(raw)
        for i in range(2000):  # far more than a pipe holds
            click.echo(f"line {i:05d} " + "x" * 64, file=stream)
        assert not stream.broken
        while True:  # the reader catches up
            try:
                os.set_blocking(read_end, False)
                if not os.read(read_end, 1 << 16):
                    break
            except BlockingIOError:
                break
        click.echo("later note", file=stream)
        assert not stream.broken
    with os.fdopen(read_end, "rb") as fh:
        os.set_blocking(read_end, True)
        assert fh.read().endswith(b"later note\n")
