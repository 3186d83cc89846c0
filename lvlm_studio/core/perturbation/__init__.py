"""Altered images scored in batches (occlusion, RISE, faithfulness) and differentiable pixel masks (iGOS++)."""
