"""Helpers shared by the Qt tool tests (pytest-qt, offscreen platform)."""

from __future__ import annotations

from PyQt5 import QtWidgets
from PyQt5.QtCore import Qt


def show_window(qtbot, window, ready: str):
    """Show ``window``, make it the active window (shortcuts need one) and wait
    for its signal named ``ready`` (its first model or group on screen)."""
    qtbot.addWidget(window)
    with qtbot.waitSignal(getattr(window, ready), timeout=60000):
        window.show()
        qtbot.waitExposed(window)
        window.activateWindow()
        QtWidgets.QApplication.setActiveWindow(window)
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is window, timeout=5000)
    return window


def key(qtbot, window, k, modifier=Qt.NoModifier) -> None:
    """Press ``k`` in the focused widget (else ``window``), as a person would."""
    target = QtWidgets.QApplication.focusWidget() or window
    qtbot.keyClick(target, k, modifier)
