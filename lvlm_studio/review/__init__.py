"""Clinical review: a calibrated "defer to a human" signal for an answer and its visual grounding.

``assessment`` answers a question, explains the answer's key words with several methods and scores
how consistent the grounding is (``assess``); ``combine`` turns the signals into one consistency
score; ``calibrate`` fits that score and its thresholds on the demo world (``cases``) and writes the
shipped ``calibration.json``; ``manifest`` reads worklists of cases; ``report`` writes a case's PDF.
No Qt: the CLI (``lvlm-studio review``) and the app use the same code. docs/REVIEW.md says why each
method and signal was chosen.
"""
