"""File formats people keep: sessions (.lvlm, no pickle, checked before anything is read), PDF reports,
the audit trail of clinical review and the worklists of cases it reviews."""
