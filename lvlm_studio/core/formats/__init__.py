"""File formats people keep: sessions (.lvlm, no pickle, checked before anything is read), PDF reports
and the audit trail of clinical review."""
