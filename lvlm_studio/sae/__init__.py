"""Sparse coders over named hook points: SAEs, transcoders and crosscoders; their file formats,
training, evaluation and inspection. Qt-free; formulas in METHODS.md ("Sparse autoencoders")."""
