"""File formats people keep: sessions (.lvlm, no pickle, checked before anything is read) and PDF reports."""
