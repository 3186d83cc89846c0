"""The hostile-input suite, app cases: bad files, broken plugins and faults met through the window.

Each case ends in exactly one dialog (recorded by the ``dialogs`` fixture), the window alive and
usable (it still answers), and nothing of the user's lost. Uncaught errors reach the dialog
through the ``ExceptionHandler`` that ``lvlm-studio`` installs.
"""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS, ask, wait_idle
from PySide6.QtCore import QTimer

from lvlm_studio.core.errors import ModelLoadError
from lvlm_studio.core.plugin.contracts import Explainer, PanelSpec
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.gui.app import SAMPLE_IMAGE
from lvlm_studio.gui.excepthook import ExceptionHandler

RELEASE = threading.Event()  # lets the explainer that never yields go at the end of its test
ENTERED = threading.Event()  # set once the stuck method is running, so Cancel cannot beat it


class ExitingExplainer(Explainer):
    id = "exiting"
    title = "Exiting"

    def explain(self, trace, model, targets, params):
        sys.exit(3)  # a plugin that ends "the program" from inside a job


class StuckExplainer(Explainer):
    """Works for a long time without ever yielding, so it never sees Cancel."""

    id = "stuck"
    title = "Stuck"

    def explain(self, trace, model, targets, params):
        ENTERED.set()
        RELEASE.wait(120)
        yield from ()
        return None


def unbuildable_panel(context):
    raise RuntimeError("this panel cannot be built")


class HostilePlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [ExitingExplainer(), StuckExplainer()]

    @hookimpl
    def lvlm_studio_panels(self):
        return [PanelSpec("unbuildable", "Unbuildable", "test_hostile_app:unbuildable_panel", "right")]


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False, extra=[(HostilePlugin(), "hostile")])


@pytest.fixture
def window(make_window, registry):
    return make_window(registry)


def assert_still_usable(qtbot, window) -> None:
    """The window answers a question after the fault."""
    window.state.set_method("raw_attention")  # with a token selected, this computes its map first
    wait_idle(qtbot, window)
    ask(qtbot, window)
    assert window.token_bar.count() == len(window.state.trace.answer_tokens) > 0


def one_dialog(dialogs, *words: str, bug: bool = False) -> tuple[str, str, str]:
    assert len(dialogs) == 1, dialogs
    text, hint, details = dialogs[0]
    for word in words:
        assert word.lower() in (text + " " + hint).lower(), (word, text, hint)
    assert ("bug" in hint) == bug, hint
    return dialogs[0]


@contextmanager
def exception_dialogs(window):
    """The app's uncaught-error handler, installed for the test's body (pytest-qt swaps the hooks per phase)."""
    handler = ExceptionHandler(window.show_error, window)
    handler.install()
    try:
        yield handler
    finally:
        handler.uninstall()


# -- images --------------------------------------------------------------------------------------
def missing(folder: Path) -> Path:
    return folder / "nowhere.png"


def garbage(folder: Path) -> Path:
    path = folder / "garbage.png"
    path.write_bytes(os.urandom(2048))
    return path


def empty(folder: Path) -> Path:
    path = folder / "empty.jpg"
    path.write_bytes(b"")
    return path


def directory(folder: Path) -> Path:
    path = folder / "photos.png"
    path.mkdir()
    return path


@pytest.mark.hostile("app")
@pytest.mark.parametrize("make", [missing, garbage, empty, directory], ids=lambda f: f.__name__)
def test_a_bad_image_shows_one_dialog_and_keeps_the_open_one(qtbot, window, dialogs, tmp_path, make):
    window.open_image(make(tmp_path))
    wait_idle(qtbot, window)
    one_dialog(dialogs, "image" if make is not missing else "does not exist")
    assert window.state.image_name == SAMPLE_IMAGE.name
    assert_still_usable(qtbot, window)


# -- model folders -------------------------------------------------------------------------------
def no_config(folder: Path) -> Path:
    return folder


def broken_config(folder: Path) -> Path:
    (folder / "config.json").write_text("{ not json")
    return folder


def a_file(folder: Path) -> Path:
    path = folder / "model.safetensors"
    path.write_bytes(b"\0" * 64)
    return path


@pytest.mark.hostile("app")
@pytest.mark.parametrize("make", [no_config, broken_config, a_file], ids=lambda f: f.__name__)
def test_a_folder_that_is_not_a_model_keeps_the_loaded_model(qtbot, window, dialogs, tmp_path, make):
    model = window.state.model
    window.load_model(make(tmp_path))
    wait_idle(qtbot, window)
    one_dialog(dialogs)
    assert window.state.model is model and window.ask_button.isEnabled()
    assert_still_usable(qtbot, window)


def pickle_only(folder: Path) -> Path:
    (folder / "config.json").write_text('{"model_type": "llava"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    return folder


def custom_code(folder: Path) -> Path:
    (folder / "config.json").write_text('{"model_type": "someones-own-arch", "auto_map": {}}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer.json").write_text("{}")
    return folder


RISKY = [(pickle_only, "allow_pickle"), (custom_code, "trust_remote_code")]


@pytest.mark.hostile("app")
@pytest.mark.parametrize(("make", "option"), RISKY, ids=["pickle", "remote-code"])
def test_a_model_that_can_run_code_is_not_loaded_unless_the_user_agrees(qtbot, window, dialogs, tmp_path,
                                                                        make, option):
    model = window.state.model
    window.load_model(make(tmp_path))  # the dialog answers No
    wait_idle(qtbot, window)
    text, risk, _ = one_dialog(dialogs, "your permissions", "trust")
    assert "--allow-pickle" not in text + risk and "--trust-remote-code" not in text + risk  # the app asks instead
    assert window.state.model is model
    assert_still_usable(qtbot, window)


@pytest.mark.hostile("app")
@pytest.mark.parametrize(("make", "option"), RISKY, ids=["pickle", "remote-code"])
def test_yes_loads_that_model_with_exactly_that_option(qtbot, window, dialogs, tmp_path, monkeypatch, make, option):
    from lvlm_studio.core.models import loading

    tried = []
    real = loading.load_model

    def spy(path, options, registry):
        tried.append(options)
        if len(tried) > 1:
            raise ModelLoadError("stopped here by the test.", "")
        return real(path, options, registry)

    monkeypatch.setattr(loading, "load_model", spy)
    dialogs.answer = dialogs.answer.Yes
    window.load_model(make(tmp_path))
    qtbot.waitUntil(lambda: len(dialogs) == 2 and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert "stopped here by the test." in dialogs[1][0]
    first, second = tried
    assert not (first.allow_pickle or first.trust_remote_code)
    assert {name for name in ("allow_pickle", "trust_remote_code") if getattr(second, name)} == {option}


# -- plugins -------------------------------------------------------------------------------------
@pytest.mark.hostile("app")
def test_a_panel_that_cannot_be_built_shows_one_dialog(qtbot, window, dialogs):
    assert window.toggle_panel("unbuildable") is None
    one_dialog(dialogs, "this panel cannot be built", bug=True)
    assert window.dock("overlay").isVisible()
    assert_still_usable(qtbot, window)


@pytest.mark.hostile("app")
def test_a_method_that_calls_sys_exit_in_its_job_shows_one_dialog(qtbot, window, dialogs):
    ask(qtbot, window)
    window.state.set_method("exiting")
    window.state.select(0)
    qtbot.waitUntil(lambda: bool(dialogs) and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    one_dialog(dialogs, "SystemExit", bug=True)
    assert_still_usable(qtbot, window)


@pytest.mark.hostile("app")
def test_cancel_of_a_method_that_never_yields_says_it_waits_for_the_plugin(qtbot, window, dialogs):
    ask(qtbot, window)
    RELEASE.clear()
    ENTERED.clear()
    window.state.set_method("stuck")
    window.state.select(0)
    try:
        qtbot.waitUntil(ENTERED.is_set, timeout=JOB_TIMEOUT_MS)  # Cancel before the job starts would simply win
        window.cancel()
        qtbot.waitUntil(lambda: "plugin" in window.statusBar().currentMessage(), timeout=10_000)
        message = window.statusBar().currentMessage()
        assert "Stuck" in message and "Quitting ends it" in message
        assert not window.cancel_button.isEnabled()
    finally:
        RELEASE.set()
    wait_idle(qtbot, window)
    assert window.cancel_button.text() == "Cancel" and dialogs == []
    assert_still_usable(qtbot, window)


# -- uncaught errors -----------------------------------------------------------------------------
@pytest.mark.hostile("app")
def test_an_error_nothing_caught_in_a_slot_is_one_dialog_with_the_traceback_folded(qtbot, window, dialogs, capfd):
    def broken_slot():
        raise ZeroDivisionError("a slot divided by zero")

    with exception_dialogs(window):
        for _ in range(3):  # as a widget that raises on every repaint would: still one dialog
            QTimer.singleShot(0, broken_slot)
        qtbot.waitUntil(lambda: bool(dialogs), timeout=5_000)
        qtbot.wait(100)
    _, _, details = one_dialog(dialogs, "ZeroDivisionError: a slot divided by zero", bug=True)
    assert "Traceback" in details and "broken_slot" in details
    assert "Traceback" not in capfd.readouterr().err
    assert_still_usable(qtbot, window)


@pytest.mark.hostile("app")
def test_an_error_nothing_caught_in_a_thread_is_one_dialog(qtbot, window, dialogs, capfd):
    def broken_thread():
        raise KeyError("from a thread")

    with exception_dialogs(window):
        thread = threading.Thread(target=broken_thread, name="plugin-helper")
        thread.start()
        thread.join()
        qtbot.waitUntil(lambda: bool(dialogs), timeout=5_000)
    _, _, details = one_dialog(dialogs, "plugin-helper", "from a thread", bug=True)
    assert "broken_thread" in details and "Traceback" not in capfd.readouterr().err
    assert_still_usable(qtbot, window)


# -- sessions and saving -------------------------------------------------------------------------
@pytest.mark.hostile("app")
def test_a_garbage_session_file_keeps_the_analysis_on_screen(qtbot, window, dialogs, tmp_path):
    ask(qtbot, window)
    tokens = window.state.trace.answer_tokens
    bad = tmp_path / "analysis.lvlm"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(500))
    window.open_session(bad)
    wait_idle(qtbot, window)
    one_dialog(dialogs, "analysis.lvlm")
    assert window.state.trace.answer_tokens == tokens and window.session_path is None
    assert bad.exists()


@pytest.mark.hostile("app")
def test_a_damaged_autosave_is_offered_fails_once_and_stays_on_disk(qtbot, make_window, registry, gui_settings,
                                                                     dialogs):
    gui_settings.autosave_folder.mkdir(parents=True)
    damaged = gui_settings.autosave_folder / "4242-0badf00d.lvlm"  # left by a window that crashed mid-disk-fault
    damaged.write_bytes(os.urandom(300))
    window = make_window(registry)
    dialogs.answer = dialogs.answer.Yes
    assert window.offer_restore()
    qtbot.waitUntil(lambda: len(dialogs) == 2 and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert "did not close normally" in dialogs[0][0] and "not a readable" in dialogs[1][0]
    assert damaged.exists() and not damaged.with_suffix(".lock").exists()  # kept, and free for a later start
    assert_still_usable(qtbot, window)


@pytest.mark.hostile("app")
def test_saving_to_a_read_only_place_says_so_and_keeps_the_last_save(qtbot, window, dialogs, tmp_path, monkeypatch):
    from lvlm_studio.core.formats import session as sessions

    ask(qtbot, window)
    path = window.save_session(tmp_path / "mine.lvlm")
    before = path.read_bytes()
    window.state.select(1)

    def read_only(session, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    monkeypatch.setattr(sessions, "save_session", read_only)
    assert window.save_session() is None
    one_dialog(dialogs, "Read-only file system", "mine.lvlm", "another place")
    assert path.read_bytes() == before and window.session_path == path
    assert window.state.trace is not None
    monkeypatch.undo()
    assert window.save_session() == path  # once the place is writable again, Save works


@pytest.mark.hostile("app")
def test_exporting_the_report_to_a_full_disk_says_so(qtbot, window, dialogs, tmp_path, monkeypatch):
    from lvlm_studio.core.formats import report

    def disk_full(session, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    ask(qtbot, window)
    monkeypatch.setattr(report, "write_report", disk_full)
    window.export_report(tmp_path / "report.pdf")
    wait_idle(qtbot, window)
    one_dialog(dialogs, "No space left on device", "report.pdf")
    assert_still_usable(qtbot, window)


# -- quitting ------------------------------------------------------------------------------------
def quit_during_a_stuck_job() -> None:
    """The child of the quitting test: ``lvlm-studio`` as it runs, quit while a job never yields."""
    from lvlm_studio.gui import app as studio
    from lvlm_studio.gui.main_window import MainWindow

    application = studio.create_application()

    def start_and_quit() -> None:
        window = next(w for w in application.topLevelWidgets() if isinstance(w, MainWindow))
        if window.runner.busy:  # plugins and the model first
            QTimer.singleShot(100, start_and_quit)
            return
        window.analysis.start("Explaining with Stuck", lambda report, cancel: threading.Event().wait(), print)
        QTimer.singleShot(200, window.close)

    QTimer.singleShot(100, start_and_quit)
    sys.exit(studio.run())


@pytest.mark.hostile("app")
def test_quitting_while_a_job_never_yields_ends_the_process(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LVLM_STUDIO_SETTINGS": str(tmp_path / "settings.ini"),
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "plugins"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


if __name__ == "__main__":
    quit_during_a_stuck_job()
