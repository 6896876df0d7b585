"""Experiments room: training the compared methods (DPO, IPO, soft-label IPO, RLHF) on preference pairs, the run
records they produce, the claims verdicts computed from those runs, and the report (tables and plots)."""
