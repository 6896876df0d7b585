"""Synthetic-world room: the toy language of prompts and responses, its hidden ground-truth reward, the preference
model that labels pairs, and the held-out evaluation (reward, win rate, KL, grammaticality) of a policy in it."""
