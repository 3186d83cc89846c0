"""The review workspace of the desktop app: a worklist, a verdict per case, sign-off from the keyboard.

``window`` holds the workspace (queue, assessment jobs, sign-off, audit records), ``case_view`` how one
case is drawn, ``dialogs`` the reviewer's name and the comment of an override or a deferral. The
worklist is read by ``lvlm_studio.core.formats.worklist`` and sign-offs go into the audit trail of
``lvlm_studio.core.formats.audit``; both are Qt-free, shared with the command line. docs/REVIEW_APP.md
says how a reviewer uses it; ``lvlm_studio/gui/review_screenshots.py`` makes its pictures.
"""
