"""The command group itself: version, help, error translation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import dsprep
from dsprep.cli import main


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """The tests that call the command's entry, run(), in this process get this process's
    signal handlers back: it leaves the default action for Ctrl-C, which would end the test
    run at a later test's raise_signal(SIGINT)."""
    signals = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
               if s is not None]
    saved = {s: signal.getsignal(s) for s in signals}
    yield
    for s, handler in saved.items():
        if handler is not None:
            signal.signal(s, handler)


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert dsprep.__version__ in result.output


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1].split("\n\n")[0].splitlines()
    assert sorted(line.split()[0] for line in listed if line.strip()) == sorted(
        ("split", "build-hdf5", "info", "verify", "means", "train", "evaluate", "sample-dump",
         "demo", "sweep-lr"))
    # The statuses a batch job tells apart, and the ones the code gives for them.
    from dsprep.cli._common import INTERRUPTED

    text = " ".join(result.output.split())
    assert f"{INTERRUPTED} stopped by Ctrl-C" in text and "143 by SIGTERM" in text


def test_os_errors_become_one_line_messages(tmp_path):
    from helpers import make_class_folders

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=4, size=(32, 32))
    (tmp_path / "a-file").write_text("not a folder")
    # The destination's parent is a file: the operating system refuses, dsprep reports it.
    result = CliRunner().invoke(main, ["split", str(dump), str(tmp_path / "a-file" / "out")])
    assert result.exit_code == 1
    assert "a-file is a file, not a folder; choose another place" in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ")
    assert len(result.output.strip().splitlines()) == 1


def test_a_full_disk_says_what_to_do(tmp_path, monkeypatch):
    import errno
    import os

    from helpers import make_class_folders

    from dsprep import build

    split = tmp_path / "split"
    make_class_folders(split / "train", classes=("a", "b"), per_class=2, size=(32, 32))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.partial"))

    monkeypatch.setattr(build, "_build_files", full)
    result = CliRunner().invoke(main, ["build-hdf5", str(split), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path / 'x.partial'}: No space left on device; free "
                             "some space there, then run the same command again\n")
    # A refusal that names no file says what to do itself, once.
    monkeypatch.setattr(build.os, "statvfs", lambda path: os.statvfs_result(
        (4096, 4096, 100, 1, 1, 1000, 900, 900, 0, 255)))
    result = CliRunner().invoke(main, ["build-hdf5", str(split), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "the HDF5 files will not fit" in result.output
    assert result.output.count("free") == 1 and "free some space there" not in result.output


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    import subprocess
    import sys

    import numpy as np

    from dsprep import store

    path = store.write_arrays(tmp_path / "f.hdf5", np.zeros((3, 4, 4, 3), np.uint8),
                              np.array([0, 1, 1]), ["a", "b"], filenames=["x", "y", "z"])
    # As in 'dsprep info FILE | head -0': the pipe is closed before dsprep writes to it.
    process = subprocess.Popen(
        [sys.executable, "-c", "from dsprep.cli import main; main()", "info", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(60) == 141
    assert err == ""  # no "Error: Broken pipe", no "Exception ignored"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_output_sent_to_a_full_disk_is_named(tmp_path):
    # dsprep info FILE > log.txt on a full disk: the error named no file.
    import numpy as np

    from dsprep import store

    path = store.write_arrays(tmp_path / "f.hdf5", np.zeros((3, 4, 4, 3), np.uint8),
                              np.array([0, 1, 1]), ["a", "b"], filenames=["x", "y", "z"])
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "dsprep", "info", str(path)], stdout=full,
                              stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 1
    assert done.stderr.decode() == ("Error: cannot write to the standard output: No space left "
                                    "on device\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_progress_bars_that_cannot_be_written_do_not_stop_the_work(tmp_path):
    # DSPREP_PROGRESS=1 with stderr on a full disk: the split said it did not fit, the build
    # threw its files away, both with exit 120 and no word.
    from helpers import make_class_folders

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=6)
    env = {**os.environ, "DSPREP_PROGRESS": "1"}
    # With an ASCII stderr, click wrote to the bytes underneath, around the guard.
    for n, extra in enumerate(({}, {"PYTHONIOENCODING": "ascii"})):
        for args, made in ((["split", dump, tmp_path / f"split{n}"], "split.json"),
                           (["build-hdf5", tmp_path / f"split{n}", tmp_path / f"hdf5{n}",
                             "--size", "16"], "train.hdf5")):
            with open("/dev/full", "w") as full:
                done = subprocess.run([sys.executable, "-m", "dsprep", *map(str, args)],
                                      stdout=subprocess.PIPE, stderr=full, env={**env, **extra},
                                      timeout=300)
            assert done.returncode == 0, (extra, done.stdout)
            assert (Path(args[2]) / made).is_file()
    # The bar still shows where stderr can be written.
    shown = subprocess.run([sys.executable, "-m", "dsprep", "build-hdf5", str(tmp_path / "split0"),
                            str(tmp_path / "again"), "--size", "16"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "train.hdf5: 100%" in shown.stderr, shown.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("option", ["--help", "--version"])
def test_the_groups_own_help_and_version_meet_a_closed_pipe_or_full_disk_as_commands_do(
        option):
    # They print while the group parses its options, before any command: 'dsprep --help |
    # true' exited 1, and '> /dev/full' ended in a traceback.
    process = subprocess.Popen([sys.executable, "-m", "dsprep", option],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(60) == 141 and err == ""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "dsprep", option], stdout=full,
                              stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 1
    assert done.stderr.decode() == ("Error: cannot write to the standard output: No space left "
                                    "on device\n")


def test_ctrl_c_while_the_command_line_imports_is_no_traceback(monkeypatch, capsys):
    import signal
    import sys

    from dsprep.__main__ import run

    class Interrupt:
        """An import hook standing in for a Ctrl-C while dsprep.cli loads."""

        def find_spec(self, name, path=None, target=None):
            if name == "dsprep.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "dsprep.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    # run() installs the command's SIGTERM handler: left in this process, it would be
    # inherited by the worker processes later tests fork, which then hang when terminated.
    previous = signal.getsignal(signal.SIGTERM)
    try:
        run()
    except SystemExit as exc:
        assert exc.code == 130  # 128 + SIGINT, as a shell reports it
    else:
        raise AssertionError("run() went on after the interrupt")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "\nAborted!\n"


@pytest.mark.parametrize("args", [
    ["split", "{dump}", "", "--force"],
    ["build-hdf5", "{dump}", ""],
    ["sample-dump", ""],
    ["train", "{dump}", ""],
    ["sweep-lr", "{dump}", ""],
    ["demo", ""],
    ["verify", "{file}", "--source-root", ""],
])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch, args):
    # An unset variable in a script (dsprep split "$RAW" "$OUT"): click took "" for the
    # folder the command ran in, and split --force cleared it.
    dump = tmp_path / "dump"
    for name in ("a", "b"):
        (dump / name).mkdir(parents=True)
    (tmp_path / "file.hdf5").write_bytes(b"")
    work = tmp_path / "work"
    (work / "precious").mkdir(parents=True)
    (work / "precious" / "thesis.txt").write_text("keep me\n")
    monkeypatch.chdir(work)
    given = [a.format(dump=dump, file=tmp_path / "file.hdf5") for a in args]
    result = CliRunner().invoke(main, given)
    assert result.exit_code == 2, result.output
    assert "is empty (an unset variable in a script?)" in result.output
    assert sorted(p.name for p in work.iterdir()) == ["precious"]
    assert (work / "precious" / "thesis.txt").read_text() == "keep me\n"


def test_python_m_dsprep_runs_the_command_line():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dsprep", "--help"], capture_output=True,
                            text=True, check=True)
    assert result.stdout.startswith("Usage: dsprep [OPTIONS] COMMAND")


def test_sigterm_unwinds_like_ctrl_c_with_status_143(capsys):
    import os
    import signal
    import time

    from dsprep.__main__ import terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    hangup = signal.getsignal(signal.SIGHUP)  # the handler ignores SIGHUP while it unwinds
    cleaned = []
    try:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this at once
        finally:
            cleaned.append(True)  # what a build's clean-up runs
    except SystemExit as exc:
        assert exc.code == 143
    else:
        raise AssertionError("SIGTERM did not stop the program")
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, hangup)
    assert cleaned == [True] and "Terminated." in capsys.readouterr().err


def test_native_library_warnings_show_only_with_v_and_errors_always(tmp_path):
    import struct
    import subprocess
    import sys

    import cv2
    import numpy as np
    from helpers import make_class_folders

    dump = make_class_folders(tmp_path / "dump", classes=("a", "b"), per_class=3, size=(24, 24))
    # A PNG with a damaged text chunk decodes, but libpng prints "libpng warning: tEXt: CRC
    # error" to file descriptor 2 itself, as it does for many real downloads.
    png = cv2.imencode(".png", np.zeros((24, 24, 3), np.uint8))[1].tobytes()
    text = b"Comment\x00hi"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + b"\0\0\0\0"
    (dump / "a" / "damaged-text.png").write_bytes(png[:33] + chunk + png[33:])

    def dsprep(*args, env=None):
        return subprocess.run([sys.executable, "-m", "dsprep", *map(str, args)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, **(env or {})})

    built = dsprep("-q", "build-hdf5", dump, tmp_path / "out", "--name", "all", "--size", "16")
    assert built.returncode == 0 and built.stderr == "", built.stderr
    data = tmp_path / "out" / "all.hdf5"
    # verify --sources re-decodes the sources in this process. The warning names no file: it
    # shows only with -v (once is enough, as before the command too).
    for loud_flags in (["verify", data, "--sources", "7", "-v"],
                       ["-v", "verify", data, "--sources", "7"],
                       ["verify", data, "--sources", "7", "-vv"]):
        loud = dsprep(*loud_flags)
        assert loud.returncode == 0 and "libpng warning" in loud.stderr, (loud_flags, loud.stderr)
    plain = dsprep("verify", data, "--sources", "7")
    assert plain.returncode == 0 and plain.stdout and plain.stderr == "", plain
    # TensorFlow's log level is TensorFlow's: it shows nothing of a command without it.
    for level in ("0", "2"):
        tf_env = dsprep("verify", data, "--sources", "7", env={"TF_CPP_MIN_LOG_LEVEL": level})
        assert tf_env.returncode == 0 and tf_env.stderr == "", (level, tf_env)
    for quiet in (["-q", "verify", data, "--sources", "7"], ["verify", data, "--sources", "7",
                                                             "-q"]):
        result = dsprep(*quiet)
        assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result
    # Errors still reach the real stderr, through Python's sys.stderr.
    refused = dsprep("verify", data, "--sources", "7", "--source-root", tmp_path / "gone", "-q")
    assert refused.returncode != 0 and "gone" in refused.stderr, refused


def test_quiet_keeps_streams_made_during_the_command_working(tmp_path):
    import subprocess
    import sys

    # A logging handler made during a -q command (as TensorFlow's import makes one) holds the
    # stream Python's stderr was then; it must still write after the command, and repeated
    # commands in one process must not leak descriptors.
    script = (
        "import logging, os, sys\n"
        "from dsprep.cli._common import _native_warnings_hidden\n"
        "log = logging.getLogger('made-during')\n"
        "with _native_warnings_hidden():\n"
        "    os.write(2, b'native warning\\n')\n"
        "    log.addHandler(logging.StreamHandler(sys.stderr))\n"
        "    print('python error', file=sys.stderr)\n"
        "log.error('logged after')\n"
        "fds = len(os.listdir('/proc/self/fd'))\n"
        "for _ in range(5):\n"
        "    with _native_warnings_hidden():\n"
        "        pass\n"
        "print(fds == len(os.listdir('/proc/self/fd')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "python error\nlogged after\n"
    assert result.stdout == "True\n"


def test_quiet_works_when_descriptor_2_is_closed(tmp_path):
    import subprocess
    import sys

    import numpy as np

    from dsprep import store

    path = store.write_arrays(tmp_path / "f.hdf5", np.zeros((2, 4, 4, 3), np.uint8),
                              np.array([0, 1]), ["a", "b"])
    # A host program that closed descriptor 2 but kept sys.stderr's object.
    script = ("import os\nfrom dsprep.cli import main\nos.close(2)\n"
              f"main(['-q', 'info', {str(path)!r}], standalone_mode=False)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "schema" in result.stdout, result


@pytest.mark.parametrize("args", [["train", "{tmp}", "{tmp}/run"], ["demo", "{tmp}/demo"]])
def test_training_commands_without_the_training_extra_say_what_to_install(tmp_path, monkeypatch,
                                                                          args):
    monkeypatch.setitem(sys.modules, "keras", None)  # as if Keras were not installed
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert "pip install 'dsprep[train]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "demo").exists()  # found before the demo's first step


def test_a_keras_backend_that_is_not_installed_is_named(tmp_path):
    import importlib.util
    import os
    import subprocess

    missing = [name for name in ("jax", "torch") if importlib.util.find_spec(name) is None]
    if not missing:
        pytest.skip("JAX and PyTorch are both installed: no backend is missing to name")
    env = {**os.environ, "KERAS_BACKEND": missing[0]}
    result = subprocess.run([sys.executable, "-m", "dsprep", "train", str(tmp_path),
                             str(tmp_path / "run")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"KERAS_BACKEND={missing[0]} needs {missing[0]} installed" in result.stderr
    assert "dsprep[train]" not in result.stderr and "Traceback" not in result.stderr


def _run_driven(code, drive, preexec_fn=None):
    """Run ``code`` (see ``_command_that_waits``), call ``drive(proc)`` once it is ready, and
    return its exit status, stdout and stderr."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    try:
        assert proc.stdout.readline() == "ready\n"
        drive(proc)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return proc.returncode, out, err


def _command_that_waits(seconds, clean_up):
    """A ``python -c`` program: dsprep's command entry around a command that prints "ready",
    waits, and runs ``clean_up`` however it ends."""
    return ("import time\n"
            "import dsprep.cli\n"
            "def main(prog_name):\n"
            "    try:\n"
            "        print('ready', flush=True)\n"
            f"        time.sleep({seconds})\n"
            "    finally:\n"
            f"        {clean_up}\n"
            "dsprep.cli.main = main\n"
            "from dsprep.__main__ import run\n"
            "run()\n")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this OS")
def test_a_hangup_stops_the_command_unless_nohup_ignores_it():
    # A closed ssh session sends SIGHUP: the command unwinds as on SIGTERM (129). nohup starts it
    # with SIGHUP ignored, and dsprep must not take that back.
    code = _command_that_waits(3, "print('cleaned', flush=True)")
    for ignored in (True, False):
        # Set either way: a suite run under nohup would pass its own SIG_IGN on.
        status, out, err = _run_driven(
            code, lambda proc: proc.send_signal(signal.SIGHUP),
            lambda ignored=ignored: signal.signal(
                signal.SIGHUP, signal.SIG_IGN if ignored else signal.SIG_DFL))
        assert out == "cleaned\n"
        if ignored:
            assert (status, err) == (0, "")
        else:
            assert (status, err.strip()) == (129, "Hangup.")


def test_the_command_hands_its_signal_handlers_back_when_it_ends(monkeypatch):
    # A SIGTERM or SIGHUP after the work (while Python shuts down) must not meet the handler
    # that raises SystemExit: that would be "Exception ignored" and exit status 0.
    import dsprep.cli
    from dsprep.__main__ import run, terminated

    seen = {}

    def main(prog_name):
        seen["during"] = signal.getsignal(signal.SIGTERM)
        raise SystemExit(0)

    monkeypatch.setattr(dsprep.cli, "main", main)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    with pytest.raises(SystemExit):
        run()
    assert seen["during"] is terminated
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_a_ctrl_c_after_the_command_ends_the_process_instead_of_raising_into_its_shutdown():
    # Python's Ctrl-C handler, put back, raised KeyboardInterrupt into the shutdown's join of
    # build-hdf5's worker pool, which then waited for ever.
    code = ("import signal, dsprep.cli\n"
            "dsprep.cli.main = lambda prog_name: None\n"
            "from dsprep.__main__ import run\n"
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
            "run()\n"
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_DFL)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout) == (0, "True\nTrue\n"), done.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this OS")
def test_a_hangup_during_the_clean_up_of_a_sigterm_does_not_cut_it_short():
    # systemd's SendSIGHUP, or a terminal closed after a kill: the clean-up the SIGTERM began
    # runs to its end, and the status still says SIGTERM.
    code = _command_that_waits(30, "print('cleaning', flush=True); time.sleep(1); "
                                   "print('cleaned', flush=True)")
    def drive(proc):
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "cleaning\n"
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGHUP)

    status, out, err = _run_driven(code, drive)
    assert out == "cleaned\n" and status == 143
    assert err.strip() == "Terminated."



def test_a_command_stopped_by_ctrl_c_exits_130(tmp_path, monkeypatch):
    from helpers import make_class_folders

    from dsprep.cli import cmd_split

    dump = make_class_folders(tmp_path / "d", classes=("a", "b"), per_class=4)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd_split, "run", interrupted)
    result = CliRunner().invoke(main, ["split", str(dump), str(tmp_path / "out")])
    # Not 1: a batch script can tell an interrupted job from a failed one.
    assert result.exit_code == 130
    assert "Aborted! Nothing that looks finished was left; run the same command again" in \
        result.output and "Traceback" not in result.output


def test_tensorflows_log_level_keeps_native_lines_for_its_commands_only(tmp_path):
    import subprocess
    import sys

    # TensorFlow's C++ errors ("Check failed" before an abort) reach descriptor 2 as libjpeg's
    # warnings do: TF_CPP_MIN_LOG_LEVEL below 3 asks for them, in the commands running it.
    script = (
        "import os, sys, click\n"
        "from dsprep.cli._common import native_lines_hidden\n"
        "def native():\n"
        "    os.write(2, b'native line\\n')\n"
        "tf = sys.argv[1] == 'tf'\n"
        "cmd = click.Command('c', callback=native_lines_hidden(native, tensorflow=tf))\n"
        "click.Group('dsprep', commands=[cmd]).main(['c'], standalone_mode=False)\n"
    )
    for level, kind, shown in (("2", "tf", True), ("0", "tf", True), ("3", "tf", False),
                               (None, "tf", False), ("2", "other", False)):
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        if level is not None:
            env["TF_CPP_MIN_LOG_LEVEL"] = level
        result = subprocess.run([sys.executable, "-c", script, kind], env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert ("native line" in result.stderr) is shown, (level, kind, result.stderr)


def test_tables_line_up_with_wide_and_decomposed_class_names():
    # Padded by len(), a CJK name (two columns a character) or a decomposed "café" (five
    # characters, four columns) pushed its row's figures out of line.
    from dsprep.cli._common import format_table

    table = format_table([["\u65e5\u672c", 1], ["cafe\u0301", 22], ["a", 333]], ["class", "n"])
    assert table.splitlines() == [
        "class    n",
        "-----  ---",
        "\u65e5\u672c     1",
        "cafe\u0301    22",
        "a      333",
    ]
