"""Judging explanations: faithfulness (deletion/insertion), plausibility against object masks, sanity, agreement."""
