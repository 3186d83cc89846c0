"""The desktop app: the only package of LVLM Studio that imports Qt.

It shows what the Qt-free core computes and nothing more: models are loaded, answers generated
and maps computed by ``lvlm_studio.core`` on a worker thread; the widgets here bind to a Qt-free
``StudioState`` and redraw when it changes.
"""
